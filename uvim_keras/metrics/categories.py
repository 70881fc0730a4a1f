"""Category specification for panoptic metrics (COCO panoptic ``categories``)."""

import json
import os

import numpy as np

# Predicted instance ids must stay below this: panopticapi's 2-channel
# converter forms ``1000 * semantic + instance`` and larger ids would alias
# another category.
INSTANCE_ID_LIMIT = 1000


class CategorySpec:
    """Panoptic categories in COCO format, with fast id lookups.

    Each category is a dict with ``id`` (int > 0), ``name`` and ``isthing``
    (0/1); ``color`` ([r, g, b]) is optional and only used when writing
    COCO panoptic files. The ids need not be contiguous.

    Example:

    >>> spec = CategorySpec([
    ...     {"id": 1, "name": "person", "isthing": 1},
    ...     {"id": 8, "name": "sky", "isthing": 0}])
    >>> spec.ids.tolist(), spec.isthing.tolist()
    ([1, 8], [True, False])
    >>> spec.index_lut[[0, 1, 8]].tolist()   # 0 is VOID
    [0, 1, 2]

    Args:
        categories: list of category dicts, a path to a JSON file holding
            such a list (or a COCO panoptic JSON with a ``categories`` key),
            or another ``CategorySpec``.
    """

    def __init__(self, categories):
        if isinstance(categories, CategorySpec):
            categories = categories.to_list()
        elif isinstance(categories, (str, os.PathLike)):
            with open(categories) as f:
                categories = json.load(f)
            if isinstance(categories, dict):
                if "categories" not in categories:
                    raise ValueError(
                        "categories: the JSON file holds a dict without a "
                        "'categories' key; expected a list of category dicts "
                        "or a COCO panoptic JSON")
                categories = categories["categories"]
        if not isinstance(categories, (list, tuple)) or not categories:
            raise ValueError(
                f"categories: got {type(categories).__name__} {categories!r:.80}; "
                "expected a non-empty list of dicts with keys id, name, isthing "
                "(or a path to such a JSON file)")
        cleaned = []
        seen = set()
        for i, cat in enumerate(categories):
            if not isinstance(cat, dict) or not {"id", "isthing"} <= set(cat):
                raise ValueError(
                    f"categories[{i}]: got {cat!r:.80}; expected a dict with "
                    "keys id, name, isthing")
            cid = int(cat["id"])
            if cid <= 0:
                raise ValueError(
                    f"categories[{i}]['id']: got {cid}; expected an integer "
                    "> 0 (0 is VOID)")
            if cid in seen:
                raise ValueError(
                    f"categories[{i}]['id']: got duplicate id {cid}; expected "
                    "distinct ids")
            seen.add(cid)
            entry = dict(cat)
            entry["id"] = cid
            entry["isthing"] = int(bool(cat["isthing"]))
            entry.setdefault("name", str(cid))
            cleaned.append(entry)
        self._categories = cleaned
        self.ids = np.array([c["id"] for c in cleaned], dtype=np.int64)
        self.names = [str(c["name"]) for c in cleaned]
        self.isthing = np.array([bool(c["isthing"]) for c in cleaned])
        self.max_id = int(self.ids.max())
        # index_lut[category id] = 1 + position in the spec; 0 for VOID and
        # for ids outside the spec (those are rejected by `check_ids`).
        self.index_lut = np.zeros(self.max_id + 1, dtype=np.int64)
        self.index_lut[self.ids] = np.arange(1, len(cleaned) + 1)
        # Allowed values in a category channel: VOID (0) and the spec's ids.
        self.allowed_lut = np.zeros(self.max_id + 1, dtype=bool)
        self.allowed_lut[0] = True
        self.allowed_lut[self.ids] = True
        # isthing_lut[category id]; False for VOID.
        self.isthing_lut = np.zeros(self.max_id + 1, dtype=bool)
        self.isthing_lut[self.ids] = self.isthing

    def __len__(self):
        return len(self._categories)

    def to_list(self):
        """Returns the categories as a list of plain dicts (JSON-ready)."""
        return [dict(c) for c in self._categories]

    def check_ids(self, values, argument):
        """Raises ValueError if `values` holds ids other than 0 and the spec's."""
        if values.size == 0:
            return
        lo, hi = int(values.min()), int(values.max())
        if lo >= 0 and hi <= self.max_id:
            ok = self.allowed_lut[values]
            if ok.all():
                return
            bad = int(values[~ok].flat[0])
        else:
            bad = lo if lo < 0 else hi
        raise ValueError(
            f"{argument}: category id {bad} is not in the category spec; "
            f"expected 0 (VOID) or one of {self.ids.tolist()}")
