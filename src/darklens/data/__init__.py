"""Files -> arrays: every DeepLense data layout, a packed cache, the data doctor."""

from darklens.data.classes import CLASS_ALIASES, class_index
from darklens.data.dataset import PackedDataset, SplitData, iter_image_inputs, open_dataset
from darklens.data.readers import read_image

__all__ = [
    "CLASS_ALIASES", "PackedDataset", "SplitData", "class_index", "iter_image_inputs",
    "open_dataset", "read_image",
]
