"""Memory bomb: keep 64 MiB blocks, touched so they are resident, until something gives."""

hoard = []
while True:
    block = bytearray(64 * 2**20)
    block[::4096] = b"x" * len(block[::4096])
    hoard.append(block)
