"""Fast-LLM@1aa6040's data path for ``--dataset_source=file``: Megatron mmap datasets, split, sampled.

- ``--data_path`` is one JSON file ``{"datasets": [{"prefix": P, "weight": w}, ...]}``; each prefix is
  resolved against the JSON file's folder and names a Megatron-LM ``P.bin`` / ``P.idx`` pair
  (``fast_llm/data/mmap.py``: header ``MMIDIDX\\0\\0``, version 1, dtype code, document count, sizes
  int32, pointers int64, doc index int64).
- ``--split=9998,2,0`` is normalised and cut by *documents*: ``round(cumsum(p) x num_documents)``
  (``GPTDataset.from_splits``); a phase with weight 0 is dropped. On a small dataset this gives the
  validation phase no document at all - ``check_split`` says so in one line where upstream would divide
  by zero while sampling.
- Sampling (``GPTDataset.sample``, Megatron's): ``num_epochs`` copies of the split's documents, shuffled
  by ``numpy.random.RandomState(seed)``, concatenated; sample i is tokens ``[i s, i s + s + 1)`` (inputs
  and next-token labels overlap by one); the sample order is shuffled again. DEVIATION: the "separate
  last epoch" refinement (a partial last epoch shuffled on its own) is not reproduced, and the seed is
  the twin's (``--seed`` + phase), not upstream's seed-shift arithmetic.
- Iteration (``Sampler``): step k uses samples ``[k B, (k+1) B)``; micro-batch m of rank r takes
  ``micro_batch_size`` consecutive samples at ``k B + m (mbs x dp) + r mbs``. The set a step sees does not
  depend on the layout, which is what makes the 16-node and small-cluster geometries train one curve.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from repro.errors import ReproError

_MAGIC = b"MMIDIDX\x00\x00"
_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float32, 7: np.float64, 8: np.uint16}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items()}
PHASES = ("training", "validation", "test")


def write_mmap(prefix: Path, documents: list[np.ndarray], dtype=np.uint16) -> None:
    """Write a Megatron-LM indexed dataset (``prefix.bin`` + ``prefix.idx``)."""
    dtype = np.dtype(dtype)
    sizes = np.array([len(d) for d in documents], dtype=np.int32)
    pointers = np.zeros(len(documents), dtype=np.int64)
    if len(documents) > 1:
        pointers[1:] = np.cumsum(sizes[:-1].astype(np.int64)) * dtype.itemsize
    doc_idx = np.arange(len(documents) + 1, dtype=np.int64)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with open(prefix.with_suffix(".bin"), "wb") as out:
        for doc in documents:
            out.write(np.asarray(doc, dtype=dtype).tobytes(order="C"))
    with open(prefix.with_suffix(".idx"), "wb") as out:
        out.write(_MAGIC)
        out.write(struct.pack("<Q", 1))
        out.write(struct.pack("<B", _CODES[dtype]))
        out.write(struct.pack("<Q", len(documents)))
        out.write(struct.pack("<Q", len(doc_idx)))
        out.write(sizes.tobytes(order="C"))
        out.write(pointers.tobytes(order="C"))
        out.write(doc_idx.tobytes(order="C"))


@dataclass
class MMapDataset:
    prefix: Path
    sizes: np.ndarray
    pointers: np.ndarray
    tokens: np.ndarray  # the whole .bin as one array (twin datasets are small)
    dtype: np.dtype

    def document(self, index: int) -> np.ndarray:
        start = int(self.pointers[index]) // self.dtype.itemsize
        return self.tokens[start:start + int(self.sizes[index])]


def read_mmap(prefix: Path) -> MMapDataset:
    idx, bin_ = prefix.with_suffix(".idx"), prefix.with_suffix(".bin")
    try:
        with open(idx, "rb") as stream:
            if stream.read(9) != _MAGIC:
                raise ReproError(f"{idx}: not a Megatron-LM index (bad magic)")
            if struct.unpack("<Q", stream.read(8))[0] != 1:
                raise ReproError(f"{idx}: index version is not 1")
            code = struct.unpack("<B", stream.read(1))[0]
            if code not in _DTYPES:
                raise ReproError(f"{idx}: unknown dtype code {code}")
            count = struct.unpack("<Q", stream.read(8))[0]
            struct.unpack("<Q", stream.read(8))
            sizes = np.frombuffer(stream.read(4 * count), dtype=np.int32)
            pointers = np.frombuffer(stream.read(8 * count), dtype=np.int64)
        dtype = np.dtype(_DTYPES[code])
        tokens = np.fromfile(bin_, dtype=dtype)
    except OSError as exc:
        raise ReproError(f"{prefix}: cannot read the dataset ({exc.strerror})") from None
    if len(sizes) != count or len(pointers) != count:
        raise ReproError(f"{idx}: truncated index")
    return MMapDataset(prefix, sizes, pointers, tokens, dtype)


def read_dataset_json(path: Path | str) -> list[tuple[Path, float]]:
    """The ``--dataset_source=file`` JSON: (resolved prefix, normalised weight) per dataset."""
    path = Path(path)
    try:
        defs = json.loads(path.read_text(encoding="utf-8"))
        entries = defs["datasets"]
        prefixes = [(path.parent / entry["prefix"]).resolve() for entry in entries]
        weights = [float(entry["weight"]) for entry in entries]
    except OSError as exc:
        raise ReproError(f"--data_path={path}: cannot read ({exc.strerror})") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ReproError(f"--data_path={path}: not a Fast-LLM dataset file ({exc})") from None
    if not entries:
        raise ReproError(f"--data_path={path}: 'datasets' is empty")
    return list(zip(prefixes, normalize(weights)))


def normalize(weights: list[float]) -> list[float]:
    total = sum(weights)
    if total <= 0 or any(w < 0 for w in weights):
        raise ReproError(f"weights {weights}: must be >= 0 with a positive sum")
    return [w / total for w in weights]


def parse_split(text) -> list[float]:
    """``--split`` is a string at 1aa6040 (``__argparse_map__``), read by ``_validate_split``: exactly
    three numbers are usable (its padding is a no-op, and Data asserts one per phase)."""
    if isinstance(text, list):
        values = [float(v) for v in text]
    else:
        try:
            values = [float(x) for x in str(text).strip("[]").split(",")]
        except ValueError:
            raise ReproError(f"--split={text}: expected three comma-separated numbers") from None
    if len(values) != 3:
        raise ReproError(f"--split={text}: expected 3 weights (training, validation, test), got {len(values)}")
    normalize(values)
    return values


def split_documents(num_documents: int, split: list[float]) -> dict[str, tuple[int, int]]:
    """Phase -> [begin, end) document range, for the phases with a positive weight."""
    phases = [(phase, p) for phase, p in zip(PHASES, normalize(split)) if p > 0]
    cumulative = np.concatenate([[0.0], np.cumsum([p for _, p in phases])])
    bounds = [round(x) for x in cumulative * num_documents]
    return {phase: (bounds[i], bounds[i + 1]) for i, (phase, _) in enumerate(phases)}


def check_split(ranges: dict[str, tuple[int, int]], needed: dict[str, int], split_text: str) -> None:
    for phase, samples in needed.items():
        if samples <= 0:
            continue
        if phase not in ranges:
            raise ReproError(f"--split={split_text}: the {phase} phase needs samples but has weight 0")
        begin, end = ranges[phase]
        if end <= begin:
            raise ReproError(f"--split={split_text}: the {phase} phase gets no document of this dataset "
                             f"(documents [{begin}, {end})); use a larger dataset")


def sample(dataset: MMapDataset, begin: int, end: int, num_samples: int, sequence_length: int,
           seed: int) -> np.ndarray:
    """(num_samples, sequence_length + 1) token array, Megatron/Fast-LLM sampling (see module doc)."""
    sizes = dataset.sizes[begin:end]
    tokens_per_epoch = int(sizes.sum())
    if tokens_per_epoch <= 1:
        raise ReproError(f"{dataset.prefix}: documents [{begin}, {end}) hold {tokens_per_epoch} token(s)")
    num_epochs = math.ceil((sequence_length * num_samples + 1) / tokens_per_epoch)
    rng = np.random.RandomState(seed=seed)
    doc_idx = np.tile(np.arange(begin, end, dtype=np.int32), num_epochs)
    rng.shuffle(doc_idx)
    stream = np.concatenate([dataset.document(int(i)) for i in doc_idx]).astype(np.int64)
    total = (len(stream) - 1) // sequence_length
    shuffle_idx = np.arange(total, dtype=np.int64)
    rng.shuffle(shuffle_idx)
    chosen = shuffle_idx[:num_samples]
    starts = chosen * sequence_length
    return np.stack([stream[s:s + sequence_length + 1] for s in starts])


def micro_batch(samples: np.ndarray, step: int, micro: int, rank: int, *, batch_size: int, micro_batch_size: int,
                data_parallel: int) -> np.ndarray:
    """The samples of micro-batch ``micro`` of ``rank`` at 0-based ``step`` (Fast-LLM's Sampler order)."""
    start = step * batch_size + micro * micro_batch_size * data_parallel + rank * micro_batch_size
    return samples[start:start + micro_batch_size]


# --------------------------------------------------------------------------------------------
# the twin's corpus


def markov_documents(num_documents: int, vocab_size: int, seed: int, min_len: int = 8,
                     max_len: int = 48, branching: int = 4) -> list[np.ndarray]:
    """Documents from a fixed random bigram chain (each token has ``branching`` likely successors): text
    a tiny model can learn, so the loss moves and a broken optimizer shows."""
    rng = np.random.RandomState(seed)
    successors = rng.randint(0, vocab_size, size=(vocab_size, branching))
    docs = []
    for _ in range(num_documents):
        length = rng.randint(min_len, max_len + 1)
        doc = np.empty(length, dtype=np.int64)
        doc[0] = rng.randint(vocab_size)
        picks = rng.randint(0, branching, size=length)
        for i in range(1, length):
            doc[i] = successors[doc[i - 1], picks[i]]
        docs.append(doc)
    return docs


def build_dataset(out: Path, params: dict, deps: dict | None = None) -> str:
    """Asset builder: a Megatron dataset of Markov documents and its Fast-LLM JSON; the hub id (the
    recipe's ``$JSON_DATA_PATH``) resolves to ``dataset.json``."""
    docs = markov_documents(int(params.get("documents", 10000)), int(params.get("vocab_size", 512)),
                            int(params.get("seed", 0)))
    write_mmap(out / "twin_corpus", docs, dtype=np.uint16)
    (out / "dataset.json").write_text(json.dumps({"datasets": [{"prefix": "twin_corpus", "weight": 1.0}]}) + "\n",
                                      encoding="utf-8")
    return "dataset.json"
