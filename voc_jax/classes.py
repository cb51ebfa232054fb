"""The 20 PASCAL VOC classes in the official order; the model adds background at index 0."""

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
# The model's output 0 is background ("no object"); class c of VOC_CLASSES is output c + 1.
CLASS_INDEX: dict[str, int] = {name: i + 1 for i, name in enumerate(VOC_CLASSES)}
