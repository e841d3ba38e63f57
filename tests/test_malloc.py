"""glibc keeps freed memory for the next update where s2s train asks it to."""

import sys

import pytest

from seq2seq.training.malloc_tuning import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_glibc_takes_the_settings():
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # setting them again changes nothing
