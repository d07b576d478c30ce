"""Stand-ins shared by several test files."""
import contextlib

import torch.nn.functional as F
from torch import nn

from vitsam.train.objectives import Classification, TrainingModule


def classify(model: nn.Module, criterion=F.cross_entropy) -> TrainingModule:
    """``model`` bound to a classification objective: what ``train_step`` takes."""
    return TrainingModule(model, Classification(criterion=criterion))


class SyncRecordingNet(nn.Module):
    """Stands in for DistributedDataParallel around a TrainingModule: records whether each
    forward ran in no_sync."""

    def __init__(self):
        super().__init__()
        self.module = classify(nn.Linear(5, 3).double())
        self.synced, self._in_no_sync = [], False

    @contextlib.contextmanager
    def no_sync(self):
        self._in_no_sync = True
        try:
            yield
        finally:
            self._in_no_sync = False

    def forward(self, batch):
        self.synced.append(not self._in_no_sync)
        return self.module(batch)
