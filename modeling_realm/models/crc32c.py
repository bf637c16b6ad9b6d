"""CRC-32C (Castagnoli), the checksum of TensorFlow checkpoints, in numpy (no compiled extension needed).

A byte-at-a-time table CRC in Python runs at a few MB/s, far too slow for a 440 MB BERT-base checkpoint. Here the
data is cut into many equal lanes whose CRCs advance together, one numpy operation per byte column, and the lane
CRCs are then combined pairwise: a CRC register is linear over GF(2), so "advance n zero bytes" is a 32 x 32 bit
matrix, applied to a whole vector of registers through four 256-entry tables.
"""

import numpy as np

POLY = 0x82F63B78  # CRC-32C, reflected
MASK_DELTA = 0xA282EAD8
LANES = 1 << 16
CHUNK = 1 << 26  # 64 MiB: the transposed copy of one chunk is all the extra memory


def _byte_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(POLY), table >> 1).astype(np.uint32)
    return table


TABLE = _byte_table()


def bytewise_update(register: int, data: bytes) -> int:
    """Advance a register over `data` one byte at a time (short tails; the reference the tests compare with)."""
    for byte in data:
        register = int(TABLE[(register ^ byte) & 0xFF]) ^ (register >> 8)
    return register


class _ZeroShift:
    """The linear map "advance the register over n zero bytes", as its images of the 32 basis registers."""

    def __init__(self, columns: np.ndarray):
        self.columns = columns  # [32] uint32
        bits = (np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1  # [256, 8]
        # [4, 256]: the image of every byte value in each of the register's four byte positions
        self.tables = np.stack([np.bitwise_xor.reduce(np.where(bits == 1, columns[8 * k: 8 * k + 8], 0), axis=1)
                                for k in range(4)]).astype(np.uint32)

    def __call__(self, registers: np.ndarray) -> np.ndarray:
        out = self.tables[0][registers & 0xFF]
        for k in range(1, 4):
            out ^= self.tables[k][(registers >> (8 * k)) & 0xFF]
        return out

    def then(self, other: "_ZeroShift") -> "_ZeroShift":
        """This shift followed by `other`."""
        return _ZeroShift(other(self.columns))

    @classmethod
    def of(cls, num_bytes: int) -> "_ZeroShift":
        basis = np.uint32(1) << np.arange(32, dtype=np.uint32)
        step = cls(TABLE[basis & 0xFF] ^ (basis >> 8))  # one zero byte
        result = cls(basis)  # no byte: the identity
        while num_bytes:
            if num_bytes & 1:
                result = result.then(step)
            step = step.then(step)
            num_bytes >>= 1
        return result


def _lanes_register(data: np.ndarray, lanes: int) -> int:
    """The register after `data` (uint8, length a multiple of `lanes`) starting from zero."""
    # [lane_length, lanes]: lane i is data[i * lane_length: (i + 1) * lane_length]; rows made contiguous
    columns = np.ascontiguousarray(data.reshape(lanes, -1).T)
    registers = np.zeros(lanes, dtype=np.uint32)
    for column in columns:
        registers = TABLE[(registers ^ column) & 0xFF] ^ (registers >> 8)
    shift = _ZeroShift.of(columns.shape[0])
    while registers.shape[0] > 1:
        # [pairs]: the left lane advanced over the right one's length, then combined
        registers = shift(registers[0::2]) ^ registers[1::2]
        shift = shift.then(shift)
    return int(registers[0])


def _update(register: int, array: np.ndarray) -> int:
    lanes = LANES
    while lanes >= 256:
        if array.size >= lanes * 16:
            body = array.size // lanes * lanes
            shifted = _ZeroShift.of(body)(np.array([register], dtype=np.uint32))
            register = int(shifted[0]) ^ _lanes_register(array[:body], lanes)
            array = array[body:]
        lanes //= 16
    return bytewise_update(register, array.tobytes())


def crc32c(data) -> int:
    """CRC-32C of `data` (bytes-like), read in chunks of CHUNK bytes."""
    array = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    register = 0xFFFFFFFF
    for start in range(0, array.size, CHUNK):
        register = _update(register, array[start: start + CHUNK])
    return register ^ 0xFFFFFFFF


def masked(crc: int) -> int:
    """The masked form TensorFlow stores (so that a CRC of data holding CRCs does not degenerate)."""
    return (((crc >> 15) | (crc << 17)) + MASK_DELTA) & 0xFFFFFFFF
