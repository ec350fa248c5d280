"""`digitlab export`: a run to ONNX or TorchScript, checked against PyTorch."""
from __future__ import annotations

import argparse


def cmd_export(args: argparse.Namespace) -> int:
    from digitlab.export import export_run

    result = export_run(args.run, args.format, args.output, args.checkpoint, args.check_images, args.data_dir,
                        dynamo=args.dynamo)
    print(f"wrote {result.path} ({result.how}, {result.size_bytes / 1e6:.1f} MB)")
    print(f"parity with PyTorch on {result.parity_images}: {result.parity}")
    return 0
