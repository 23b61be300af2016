"""peftcheck's overhead over a plain hand-written Trainer script (issue 2): one LoRA config, the
same steps, trained both ways in one run; prints the time ratio peftcheck / plain.

    PEFTCHECK_DATA_DIR=/work/shared/data python benchmarks/bench_overhead.py
    python benchmarks/bench_overhead.py --model tiny-opt --data fixtures/tiny_corpus.jsonl --text-field text

Both sides start from the same resolved model folder and data file and do the same work: load
the base and tokenizer, tokenize the slice, wrap it with LoRA, train ``--steps`` steps. The runs
alternate (plain, peftcheck, peftcheck, plain, ...) and the verdict is the median of the
per-round ratios, so load from neighbours on a shared machine hits both sides alike. Exits 1
when the median ratio exceeds ``--max-ratio`` (default 1.10: peftcheck within 10%).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LORA = {"r": 8, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}


def plain_run(model_path: str, data_file: str, *, split: str, text_field: str, steps: int, max_length: int) -> float:
    """The hand-written script a user would write; returns seconds from load to trained."""
    import datasets
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments, set_seed,
    )  # fmt: skip

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="float32")
    raw = datasets.load_dataset("json", data_files={"train": data_file}, split=split)
    train = raw.map(
        lambda b: tokenizer([str(t) for t in b[text_field]], truncation=True, max_length=max_length),
        batched=True, remove_columns=raw.column_names,
    )  # fmt: skip
    set_seed(0)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA))
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, max_steps=steps, learning_rate=1e-3, per_device_train_batch_size=4, seed=0,
            lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to=[],
            disable_tqdm=True, use_cpu=True, remove_unused_columns=False,
        )  # fmt: skip
        Trainer(
            model=model, args=args, train_dataset=train,
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        ).train()  # fmt: skip
    return time.perf_counter() - started


def peftcheck_run(suite: dict[str, Any]) -> float:
    """The same through peftcheck's pipeline (a fresh one: it loads the base again)."""
    import yaml

    from peftcheck.cache import Pipeline
    from peftcheck.spec import load_suite_text

    started = time.perf_counter()
    loaded = load_suite_text(yaml.safe_dump(suite), path=str(ROOT / "benchmarks" / "overhead.yaml"))
    pipeline = Pipeline(progress=lambda line: None)
    pipeline.artifact(loaded, "lora")
    pipeline.close()
    return time.perf_counter() - started


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="built-in model or folder (default: smollm2-135m)")
    parser.add_argument("--data", default="Abirate/english_quotes", help="dataset reference (default: english_quotes)")
    parser.add_argument("--text-field", default="quote", help="text column (default: quote)")
    parser.add_argument("--split", default="train[:64]", help="training slice (default: train[:64])")
    parser.add_argument("--max-length", type=int, default=64, help="tokens per example (default: 64)")
    parser.add_argument("--steps", type=int, default=10, help="training steps per run (default: 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both runs (default: 3)")
    parser.add_argument("--max-ratio", type=float, default=1.10, help="largest median ratio (default: 1.10)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from peftcheck.data import resolve_dataset
    from peftcheck.models import resolve_model

    model_path = resolve_model(args.model, base_dir=ROOT).path
    data_file = resolve_dataset(args.data, base_dir=ROOT)[1]
    suite = {
        "suite": "overhead", "model": model_path, "dtype": "float32", "device": "cpu",
        "data": {"dataset": data_file, "split": args.split, "text_field": args.text_field, "max_length": args.max_length},
        "train": {"max_steps": args.steps, "learning_rate": 1e-3, "per_device_train_batch_size": 4, "seed": 0},
        "methods": {"lora": {"peft": "LoraConfig", **LORA}},
    }  # fmt: skip
    plain = lambda: plain_run(  # noqa: E731
        model_path, data_file, split=args.split, text_field=args.text_field, steps=args.steps,
        max_length=args.max_length,
    )  # fmt: skip
    ours = lambda: peftcheck_run(suite)  # noqa: E731
    print(f"warm-up (imports, file cache): {plain():.1f}s plain, {ours():.1f}s peftcheck", file=sys.stderr)
    rows = []
    for index in range(args.rounds):
        if index % 2 == 0:
            p, q = plain(), ours()
        else:
            q, p = ours(), plain()
        rows.append({"plain_s": p, "peftcheck_s": q, "ratio": q / p})
        print(f"round {index + 1}: plain {p:.2f}s  peftcheck {q:.2f}s  ratio {q / p:.3f}", file=sys.stderr)
    ratio = statistics.median(r["ratio"] for r in rows)
    verdict = "within" if ratio <= args.max_ratio else "OVER"
    print(f"peftcheck/plain = {ratio:.3f} (median of {len(rows)} rounds, {args.steps} steps of LoRA on "
          f"{args.model}); {verdict} the {args.max_ratio:g} bound")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"ratio": ratio, "rounds": rows, "args": vars(args)}, indent=2))
    return 0 if ratio <= args.max_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
