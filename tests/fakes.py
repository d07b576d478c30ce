"""Stand-ins shared by several test files."""
import contextlib

from torch import nn


class SyncRecordingNet(nn.Module):
    """Stands in for DistributedDataParallel: records whether each forward ran in no_sync."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 3).double()
        self.synced, self._in_no_sync = [], False

    @contextlib.contextmanager
    def no_sync(self):
        self._in_no_sync = True
        try:
            yield
        finally:
            self._in_no_sync = False

    def forward(self, x):
        self.synced.append(not self._in_no_sync)
        return self.fc(x)
