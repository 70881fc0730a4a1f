"""Constructor arguments that were renamed, still accepted under their old names.

The names follow keras-hub: `num_layers` for the depth of a transformer
(`keras_hub.models.ViTBackbone(num_layers=...)`), `dropout_rate` for a
dropout rate (`ViTBackbone(dropout_rate=...)` and its layers, which keep the
`keras.layers.Dropout` itself in `self.dropout`), and `posemb` for the kind of
position embedding (big_vision's name, which the models already used).

`@renamed_arguments(old="new", ...)` on a layer or model class:

* configs saved under the old names load unchanged: `from_config` maps them
  to the new names, silently (the bundled presets' `config.json` and
  `task.json` were written with the old names);
* a direct call with an old keyword still works, with a `DeprecationWarning`
  naming the new one;
* giving both names is a `TypeError`;
* `cls.upgrade_config(config)` returns a config with the current names, for
  code that passes a saved config to the constructor itself (keras-hub's
  `Backbone.from_config` calls `cls(**config)`); `cls.RENAMED_ARGUMENTS` is
  {old: new}, the renames of the class and its decorated bases.

`get_config` emits the new names only. Only Python names change: layer
names, and with them variable paths and checkpoint name maps, stay as they
were.

Example:
>>> @renamed_arguments(depth="num_layers")
... class Stack(keras.layers.Layer):
...     def __init__(self, num_layers, **kwargs): ...
>>> Stack.from_config({"depth": 2})   # a saved config: no warning
>>> Stack(depth=2)                    # DeprecationWarning: now named 'num_layers'
"""

import functools
import inspect
import warnings


def current_names(cls_name, renames, kwargs, warn=False, stacklevel=3):
    """`kwargs` with every old name of `renames` ({old: new}) replaced by the
    new one; a `DeprecationWarning` per old name when `warn`."""
    if not any(old in kwargs for old in renames):
        return kwargs
    kwargs = dict(kwargs)
    for old, new in renames.items():
        if old not in kwargs:
            continue
        if new in kwargs:
            raise TypeError(
                f"{cls_name} got both {old!r} (the old name) and {new!r}; pass {new!r} only.")
        if warn:
            warnings.warn(
                f"{cls_name}({old}=...) is deprecated: the argument is now named {new!r} "
                f"(pass {new}=...).", DeprecationWarning, stacklevel=stacklevel)
        kwargs[new] = kwargs.pop(old)
    return kwargs


def renamed_arguments(**renames):
    """Class decorator: the constructor arguments `renames` ({old: new}) were
    renamed; see the module docstring."""

    def decorate(cls):
        all_renames = {**getattr(cls, "RENAMED_ARGUMENTS", {}), **renames}
        init = cls.__init__
        from_config = cls.from_config.__func__  # the classmethod's function (through the MRO)

        @functools.wraps(init)
        def __init__(self, *positional, **keywords):
            keywords = current_names(type(self).__name__, all_renames, keywords, warn=True)
            init(self, *positional, **keywords)

        # Keras reads the constructor's signature with both `inspect.signature`
        # and `inspect.getfullargspec`; both must see the real one.
        __init__.__signature__ = inspect.signature(init)

        @functools.wraps(from_config)
        def from_config_with_current_names(klass, config):
            return from_config(klass, klass.upgrade_config(config))

        def upgrade_config(klass, config):
            """`config` (a dict of constructor arguments) with the arguments'
            current names (`RENAMED_ARGUMENTS` maps the old ones)."""
            return current_names(klass.__name__, klass.RENAMED_ARGUMENTS, dict(config))

        cls.RENAMED_ARGUMENTS = all_renames
        cls.__init__ = __init__
        cls.from_config = classmethod(from_config_with_current_names)
        cls.upgrade_config = classmethod(upgrade_config)
        return cls

    return decorate
