"""Pictures of inputs and task outputs (numpy + Pillow only).

* `colors`: the one class palette, depth colour map and depth scale bar;
* `figures`: `uvim-keras predict`'s pictures and the demo's figure.

>>> from uvim_keras.visualize import panoptic_to_rgb, picture
"""

from uvim_keras.visualize.colors import (
    class_colors,
    depth_scale_bar,
    depth_to_rgb,
    grid,
    image_to_uint8,
    panoptic_to_rgb,
    segment_edges,
    text_width,
)
from uvim_keras.visualize.figures import (
    COCO_PANOPTIC_CLASSES,
    class_names,
    demo_figure,
    legend_entries,
    panoptic_overlay,
    picture,
    render_key,
)
