"""The torch side of the parity checks and benchmarks: torchvision's AlexNet and the transfer
network (backbone + the reference's head) as torch modules. The one place they are built;
torch is imported here, never in voc_jax.

The transfer network mirrors voc_jax.model.TransferNet: dropout after the ReLUs of fc6 and fc7
and of the head's first layer (identity in eval mode). Its state dict uses the converter's
torch names: ``features.*``, ``classifier.1`` (fc6), ``classifier.4`` (fc7), ``head.fc_a``,
``head.fc_b``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch
import torchvision

from voc_jax.model import DENSE_LAYERS, FC_WIDTH, POOLED_SIZE

FC6, FC7 = DENSE_LAYERS[0].torch_name, DENSE_LAYERS[1].torch_name


def alexnet(num_classes: int = 1000, conv1_padding: int = 2) -> torchvision.models.AlexNet:
    model = torchvision.models.alexnet(weights=None, num_classes=num_classes)
    model.features[0].padding = (conv1_padding, conv1_padding)
    return model


class TransferNet(torch.nn.Module):
    """AlexNet backbone + the transfer head; ``forward`` returns logits."""

    def __init__(
        self,
        num_classes: int = 21,
        hidden: int = FC_WIDTH,
        conv1_padding: int = 2,
        dropout: float = 0.5,
        backbone: torchvision.models.AlexNet | None = None,
    ):
        super().__init__()
        base = backbone if backbone is not None else alexnet(conv1_padding=conv1_padding)
        nn = torch.nn
        self.features, self.avgpool = base.features, base.avgpool
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("0", nn.Dropout(0.0)),  # keeps torchvision's indices: 1 fc6, 4 fc7
                    ("1", base.classifier[1]),
                    ("2", nn.ReLU(inplace=True)),
                    ("3", nn.Dropout(dropout)),
                    ("4", base.classifier[4]),
                    ("5", nn.ReLU(inplace=True)),
                    ("6", nn.Dropout(dropout)),
                ]
            )
        )
        self.head = nn.ModuleDict(
            {"fc_a": nn.Linear(FC_WIDTH, hidden), "fc_b": nn.Linear(hidden, num_classes)}
        )
        self.head_dropout = nn.Dropout(dropout)

    def backbone_modules(self) -> list[torch.nn.Module]:
        """What a frozen-backbone run does not train."""
        return [self.features, self.classifier]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        x = self.classifier(x)
        x = self.head_dropout(torch.relu(self.head["fc_a"](x)))
        return self.head["fc_b"](x)


def transfer_net_from_state(
    state: Mapping[str, np.ndarray], *, num_classes: int, hidden: int, conv1_padding: int
) -> TransferNet:
    """A TransferNet holding a converter-layout transfer state dict (eval mode)."""
    model = TransferNet(num_classes, hidden, conv1_padding)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    return model.eval()


def alexnet_from_state(
    state: Mapping[str, np.ndarray], *, num_classes: int, conv1_padding: int
) -> torchvision.models.AlexNet:
    model = alexnet(num_classes, conv1_padding)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    return model.eval()


__all__ = ["FC6", "FC7", "POOLED_SIZE", "TransferNet", "alexnet", "alexnet_from_state"]
