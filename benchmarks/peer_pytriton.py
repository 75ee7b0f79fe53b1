"""The peer in bench_peers.py: all-MiniLM-L6-v2 served by PyTriton (Triton Inference Server).

    PYTHON_WITH_PYTRITON benchmarks/peer_pytriton.py --model DIR --grpc-port P [--threads 2]

Run by bench_peers.py with a Python that has `nvidia-pytriton`, torch and transformers
(PyTriton pins numpy < 2, so it usually lives in a virtual environment of its own). The
same model files and the same mean pooling as the text service (services/text/model.py),
torch FP32 on `--threads` threads, Triton's dynamic batching up to 32. Inputs: TEXT
(bytes, [1]); outputs: POOLED (float32, [384]) and MODEL_MS (the batch's model time, so
the client can subtract it as it does for the text service). Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig
from transformers import AutoModel, AutoTokenizer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    model = AutoModel.from_pretrained(args.model, local_files_only=True, use_safetensors=True).eval()

    @batch
    def infer(TEXT: np.ndarray):  # noqa: N803 (Triton's input name)
        texts = [row[0].decode("utf-8") for row in TEXT]
        started = time.perf_counter()
        with torch.inference_mode():
            encoded = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = F.normalize((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9), dim=-1)
        model_ms = np.full((len(texts), 1), (time.perf_counter() - started) * 1000, dtype=np.float32)
        return {"POOLED": pooled.numpy().astype(np.float32), "MODEL_MS": model_ms}

    config = TritonConfig(
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        http_address="127.0.0.1",
        http_port=args.http_port,
        metrics_address="127.0.0.1",
        metrics_port=args.metrics_port,
        log_verbose=0,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name="minilm",
            infer_func=infer,
            inputs=[Tensor(name="TEXT", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="POOLED", dtype=np.float32, shape=(-1,)), Tensor(name="MODEL_MS", dtype=np.float32, shape=(1,))],
            config=ModelConfig(max_batch_size=32, batcher=DynamicBatcher(max_queue_delay_microseconds=0)),
            strict=False,
        )
        triton.serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
