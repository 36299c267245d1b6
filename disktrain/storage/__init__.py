"""The storage layer: chunk files (aligned, direct, crc32c-checked), disk space, atomic writes,
and the dataset store. Every store above (sample, packed) is built from these parts."""
