"""The configs, one file per recipe and backbone; ``BY_ARCH`` names each backbone's own
(for messages that suggest one: tests/test_configs.py checks each names its architecture)."""

BY_ARCH = {
    "alexnet": "voc07_alexnet.py",
    "vgg16": "voc07_vgg16.py",
    "resnet50": "voc07_resnet50.py",
    "resnet26": "voc07_resnet26.py",
    "efficientnet_lite0": "voc07_lite0.py",
}
