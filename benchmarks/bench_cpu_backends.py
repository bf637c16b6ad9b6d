"""The reader on CPU: one forward pass of `RealmReader` over [5, 320] tokens (one question at REALM's 5 blocks), in
float32 and in every faster form the package registry offers, timed interleaved in one process.

Candidates (each skipped with its reason when its package is missing or it fails):

- float32; bfloat16 weights (`.to(torch.bfloat16)`); float32 weights under `torch.autocast(bfloat16)`;
- int8: `torch.ao.quantization.quantize_dynamic` (deprecated; what the README told users to paste), the package's
  own switch (`set_precision("int8")`: per-row activation and per-output-channel weight scales, `torch._int_mm`),
  torchao's `Int8DynamicActivationInt8WeightConfig`;
- ONNX Runtime: the reader exported by `torch.onnx.export`, float32 and `onnxruntime.quantization.quantize_dynamic`
  int8;
- OpenVINO: `openvino.convert_model` of the reader, float32 and the bf16 inference precision hint.

Every candidate's span logits `[5, num_spans]` are compared with float32's (largest absolute difference, and
whether the best span is the same). Random weights: timing does not depend on their values.

With `--demo`, the quality of the package's switch on trained weights instead: the demo model of `realm-qa`
(built on first use under $REALM_HF_CACHE, ~4 min on 2 idle cores) answers every synthetic question at each
precision; exact match on the held-out people (the demo's own figure) and on all questions, and the share of answers
identical to float32's (same text from the same block).

    python benchmarks/bench_cpu_backends.py                 # BERT-base reader, [5, 320], 8 rounds
    python benchmarks/bench_cpu_backends.py --demo          # exact match per precision on the demo model
    python benchmarks/bench_cpu_backends.py --quick         # tiny reader, [5, 64], 2 rounds, torch only (smoke test)
"""

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_embeddings import markdown_table  # noqa: E402

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
HEADERS = ["candidate", "ms / forward (median)", "x float32", "max abs diff of logits", "best span = float32",
           "extra install"]
INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids", "block_mask", "relevance_score"]


class SpanLogits(torch.nn.Module):
    """The reader's span scoring as one module of five tensors (what ONNX and OpenVINO convert)."""

    def __init__(self, reader):
        super().__init__()
        self.reader = reader

    def forward(self, input_ids, attention_mask, token_type_ids, block_mask, relevance_score):
        # [rows, num_spans]
        return self.reader.score_spans(input_ids, attention_mask, token_type_ids, block_mask, relevance_score)[0]


def make_reader(quick: bool):
    from modeling_realm import RealmConfig, RealmReader

    torch.manual_seed(0)
    config = RealmConfig(**(TINY if quick else {}))
    return RealmReader(config).eval()


def make_inputs(config, rows: int, seq_len: int) -> dict:
    """`[rows, seq_len]` reader inputs: a 16-token question, then the block, then padding on the last row."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1000, config.vocab_size, (rows, seq_len), generator=generator)
    attention_mask = torch.ones(rows, seq_len, dtype=torch.long)
    attention_mask[-1, seq_len * 3 // 4:] = 0
    token_type_ids = torch.zeros(rows, seq_len, dtype=torch.long)
    token_type_ids[:, 17:] = 1
    block_mask = attention_mask.bool() & token_type_ids.bool()
    block_mask[:, -1] = False
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
            "block_mask": block_mask, "relevance_score": torch.randn(rows, generator=generator)}


# ------------------------------------------------------------------------------------------------ candidates
def torch_runner(module, autocast=None):
    def run(inputs):
        context = torch.autocast("cpu", dtype=autocast) if autocast else contextlib.nullcontext()
        with torch.inference_mode(), context:
            return module(**inputs).float()
    return run


def candidate_float32(reader, inputs, scratch):
    return torch_runner(SpanLogits(reader)), "-"


def candidate_bf16_weights(reader, inputs, scratch):
    import copy
    return torch_runner(SpanLogits(copy.deepcopy(reader).to(torch.bfloat16))), "-"


def candidate_bf16_autocast(reader, inputs, scratch):
    return torch_runner(SpanLogits(reader), autocast=torch.bfloat16), "-"


def candidate_torch_ao(reader, inputs, scratch):
    import copy

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = quantize_dynamic(copy.deepcopy(reader), {torch.nn.Linear}, dtype=torch.qint8)
    return torch_runner(SpanLogits(quantized)), "-"


def candidate_own_int8(reader, inputs, scratch):
    import copy

    model = copy.deepcopy(reader)
    model.set_precision("int8")
    return torch_runner(SpanLogits(model)), "-"


def candidate_own_bf16(reader, inputs, scratch):
    import copy

    model = copy.deepcopy(reader)
    model.set_precision("bfloat16")
    return torch_runner(SpanLogits(model)), "-"


def candidate_torchao(reader, inputs, scratch):
    import copy

    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    model = copy.deepcopy(reader)
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    return torch_runner(SpanLogits(model)), "torchao " + package_size("torchao")


def export_onnx(reader, inputs, scratch) -> Path:
    path = Path(scratch) / "reader.onnx"
    if not path.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(SpanLogits(reader), tuple(inputs[name] for name in INPUT_NAMES), str(path),
                              input_names=INPUT_NAMES, output_names=["reader_logits"], dynamo=True,
                              external_data=False, verbose=False)
    return path


def ort_runner(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    wanted = {node.name for node in session.get_inputs()}

    def run(inputs):
        feed = {name: tensor.numpy() for name, tensor in inputs.items() if name in wanted}
        return torch.from_numpy(session.run(None, feed)[0]).float()
    return run


def candidate_ort_fp32(reader, inputs, scratch):
    return ort_runner(export_onnx(reader, inputs, scratch)), "onnxruntime " + package_size("onnxruntime")


def candidate_ort_int8(reader, inputs, scratch):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = export_onnx(reader, inputs, scratch)
    target = Path(scratch) / "reader-int8.onnx"
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    return ort_runner(target), "onnxruntime " + package_size("onnxruntime")


def ov_runner(reader, inputs, precision: str):
    import openvino

    model = openvino.convert_model(SpanLogits(reader), example_input=tuple(inputs[n] for n in INPUT_NAMES))
    compiled = openvino.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                             "INFERENCE_NUM_THREADS": torch.get_num_threads()})

    def run(inputs):
        result = compiled([inputs[name].numpy() for name in INPUT_NAMES])
        return torch.from_numpy(np.asarray(result[0])).float()
    return run


def candidate_ov_fp32(reader, inputs, scratch):
    return ov_runner(reader, inputs, "f32"), "openvino " + package_size("openvino")


def candidate_ov_bf16(reader, inputs, scratch):
    return ov_runner(reader, inputs, "bf16"), "openvino " + package_size("openvino")


CANDIDATES = {
    "float32": candidate_float32,
    "bfloat16 weights (.to)": candidate_bf16_weights,
    "bfloat16 autocast": candidate_bf16_autocast,
    "set_precision('bfloat16')": candidate_own_bf16,
    "torch.ao quantize_dynamic int8": candidate_torch_ao,
    "set_precision('int8') (torch._int_mm)": candidate_own_int8,
    "torchao Int8DynamicActivationInt8Weight": candidate_torchao,
    "onnxruntime float32": candidate_ort_fp32,
    "onnxruntime int8 (quantize_dynamic)": candidate_ort_int8,
    "openvino float32": candidate_ov_fp32,
    "openvino bf16 hint": candidate_ov_bf16,
}


QUICK_CANDIDATES = ["bfloat16 weights (.to)", "bfloat16 autocast", "torch.ao quantize_dynamic int8",
                    "set_precision('bfloat16')", "set_precision('int8') (torch._int_mm)"]


def package_size(name: str) -> str:
    """Installed size of a top-level package directory, e.g. '78 MB'."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    root = Path(spec.origin).parent
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    return f"{size / 1e6:.0f} MB"


# ------------------------------------------------------------------------------------------------ measuring
def prepare(reader, inputs, scratch, names):
    """name -> (run, install note), or name -> reason when the candidate cannot run."""
    prepared = {}
    for name in names:
        try:
            run, note = CANDIDATES[name](reader, inputs, scratch)
            run(inputs)  # warm-up: first-call allocations, graph compilation
            prepared[name] = (run, note)
        except Exception as error:  # noqa: BLE001 - a benchmark reports what failed and goes on
            prepared[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
    return prepared


def measure(prepared, inputs, rounds: int) -> dict:
    """Time every runnable candidate once per round, candidates interleaved; median milliseconds."""
    times = {name: [] for name, value in prepared.items() if not isinstance(value, str)}
    for _ in range(rounds):
        for name in times:
            start = time.perf_counter()
            prepared[name][0](inputs)
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: float(np.median(values)) for name, values in times.items()}


def rows_of(prepared, timings, inputs) -> list[list]:
    reference = prepared["float32"][0](inputs)
    rows = []
    for name, value in prepared.items():
        if isinstance(value, str):
            rows.append([name, "skipped", "-", "-", value, "-"])
            continue
        logits = value[0](inputs)
        same = bool(logits.flatten().argmax() == reference.flatten().argmax())
        # spans outside the block score the most negative finite number of each dtype: compare the others
        inside = reference > -1e30
        diff = float((logits[inside] - reference[inside]).abs().max())
        rows.append([name, timings[name], timings["float32"] / timings[name], diff, same, value[1]])
    return rows


# ------------------------------------------------------------------------------------------------ quality
DEMO_HEADERS = ["precision", "exact match, held out (%)", "exact match, all (%)", "answers = float32", "questions"]


def demo_quality() -> list[list]:
    """Exact match and answers identical to float32 on the demo model, one fresh load per precision."""
    from modeling_realm.apps import demo, synthetic
    from modeling_realm.models.precision import PRECISIONS

    people = synthetic.invent_people(demo.SETTINGS["num_people"], seed=demo.SETTINGS["seed"])
    items = synthetic.questions(people)
    held_out = [int(item["doc_id"]) < demo.SETTINGS["held_out_people"] for item in items]
    answers = {}
    for precision in PRECISIONS:
        model = demo.load_demo().set_precision(precision)
        answers[precision] = model.answer([item["question"] for item in items], batch_size=16)
    rows = []
    for precision, got in answers.items():
        exact = [a["answer"].lower() == item["answer"][0].lower() for a, item in zip(got, items, strict=True)]
        same = sum((a["answer"], a["block_id"]) == (b["answer"], b["block_id"])
                   for a, b in zip(got, answers["float32"], strict=True))
        held = [e for e, h in zip(exact, held_out, strict=True) if h]
        rows.append([precision, 100 * sum(held) / len(held), 100 * sum(exact) / len(exact),
                     f"{same}/{len(items)}", len(items)])
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--rows", type=int, default=5)
    parser.add_argument("--seq-len", type=int, default=320)
    parser.add_argument("--only", nargs="*", default=None, help="candidate names to run (float32 always runs)")
    parser.add_argument("--quick", action="store_true", help="tiny reader, [5, 64], 2 rounds (smoke test)")
    parser.add_argument("--demo", action="store_true", help="exact match per precision on the demo model")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--work-dir", default=None, help="unused (nothing is written; kept for the common options)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seq_len = 2, 64
        args.only = args.only if args.only is not None else QUICK_CANDIDATES
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.demo:
        rows = demo_quality()
        print(markdown_table(DEMO_HEADERS, rows))
        if args.json:
            Path(args.json).write_text(json.dumps({"demo_rows": rows}) + "\n")
        return {"demo_rows": rows}
    reader = make_reader(args.quick)
    inputs = make_inputs(reader.config, args.rows, args.seq_len)
    names = ["float32"] + [name for name in CANDIDATES if name != "float32" and
                           (args.only is None or name in args.only)]
    print(f"# reader forward on CPU: [{args.rows}, {args.seq_len}] tokens, "
          f"{'tiny' if args.quick else 'bert-base'} reader, {args.rounds} rounds interleaved; "
          f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)", flush=True)
    with tempfile.TemporaryDirectory(prefix="cpu-backends-") as scratch:
        prepared = prepare(reader, inputs, scratch, names)
        timings = measure(prepared, inputs, args.rounds)
        rows = rows_of(prepared, timings, inputs)
    print(markdown_table(HEADERS, rows))
    summary = {"rows": rows, "shape": [args.rows, args.seq_len], "quick": args.quick}
    if args.json:
        Path(args.json).write_text(json.dumps(summary) + "\n")
    return summary


if __name__ == "__main__":
    main()
