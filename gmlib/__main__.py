"""`python -m gmlib compress`: from a trained checkpoint to a pruned, fine-tuned, exported network and its card.

    python -m gmlib compress --builder smp:Unet:resnet34 --weights unet.pt --data severstal/ --target macs:0.5 \
        --out unet-half/

Every argument is checked before the long work starts, and an error names the bad one (exit status 2); a failure
later says what failed (exit status 1). OUT appears only when complete (gmlib.card.write_outputs).
"""
import argparse
import dataclasses
import sys
from pathlib import Path

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    """The command line: `compress` and its options."""
    from .criteria import CRITERIA
    from .recipe import METHODS
    from .tasks import METRICS
    top = argparse.ArgumentParser(prog="python -m gmlib", description="gmlib: FPGM filter pruning")
    commands = top.add_subparsers(dest="command", required=True)
    p = commands.add_parser("compress", help="prune a trained network to a target, fine-tune, export, write a card",
                            description=__doc__.split("\n\n")[0])
    p.add_argument("--builder", required=True, help="smp:<Arch>:<encoder>, torchvision:<name>, timm:<name> or a "
                   "gmlib.models name")
    p.add_argument("--weights", help="the trained checkpoint (a state_dict); left out: random weights")
    p.add_argument("--data", required=True, help="a Severstal-layout folder (segmentation) or a folder of class "
                   "sub-folders (classification)")
    p.add_argument("--target", default="macs:0.5", help="macs:<share>, params:<share>, latency:<share> or "
                   "latency:<n>ms (default macs:0.5)")
    p.add_argument("--out", required=True, help="the folder to write; it must not exist (see --overwrite)")
    p.add_argument("--criterion", default="fpgm", choices=CRITERIA)
    p.add_argument("--method", default="sensitivity", choices=METHODS, help="how gmlib.allocate shares the cut")
    p.add_argument("--round-to", type=int, default=8, help="keep channels in multiples of this (default 8; 1: any "
                   "width, which ONNX Runtime may run slower than the unpruned network)")
    p.add_argument("--budget", default="1 epoch", help="fine-tuning: '<n> steps' or '<n> epochs' (default 1 epoch)")
    p.add_argument("--lr", type=float, default=3e-4, help="fine-tuning peak lr (AdamW, cosine to 0)")
    p.add_argument("--metric", choices=sorted(METRICS), help="default: accuracy or dice_kaggle, by the data")
    p.add_argument("--size", type=int, default=224, help="classification: images resized to size x size")
    p.add_argument("--no-normalize", action="store_true", help="classification: feed images in [0, 1] instead of "
                   "normalised with ImageNet's mean and std")
    p.add_argument("--scale", type=float, default=0.25, help="segmentation: strips downscaled by this factor")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of the images every score is taken on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=20, help="latency: interleaved timing rounds")
    p.add_argument("--threads", type=int, default=1, help="latency: ONNX Runtime threads")
    p.add_argument("--device", help="default: CUDA when present")
    p.add_argument("--no-verify", action="store_true", help="skip the check that the pruned network computes what "
                   "the original with the removed channels zeroed does")
    p.add_argument("--overwrite", action="store_true", help="replace OUT (only once the new one is complete)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(parser=p)  # so that errors show this command's usage
    return top


def _checked(p, args):
    """(Data, model) once every argument is known to be good; else p.error naming the first bad one."""
    from .builders import build, load_weights
    from .card import check_out
    from .folders import open_data
    from .recipe import parse_budget, parse_target
    from .tasks import TASK_OF

    def check(flag, f, *a, **k):
        try:
            return f(*a, **k)
        except (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError) as e:
            p.error(f"argument {flag}: {e}")
    check("--target", parse_target, args.target)
    check("--budget", parse_budget, args.budget, 1)
    check("--out", check_out, args.out, args.overwrite)
    data = check("--data", open_data, args.data, size=args.size, scale=args.scale, batch_size=args.batch_size,
                 val_fraction=args.val_fraction, seed=args.seed, normalize=not args.no_normalize)
    if args.metric and TASK_OF[args.metric] != data.task:
        p.error(f"argument --metric: {args.metric!r} scores {TASK_OF[args.metric]}, but {args.data} holds "
                f"{data.task} data")
    model = check("--builder", build, args.builder, data.num_classes)
    if args.weights is not None:
        check("--weights", load_weights, model, args.weights,
              label=f"builder {args.builder!r} with {data.num_classes} classes ({data.task} data)")
    return data, model.eval()


def main(argv=None) -> int:
    """Run the command line `argv` (default sys.argv[1:]); returns the exit status."""
    args = parser().parse_args(argv)
    data, model = _checked(args.parser, args)
    from .card import write_outputs
    from .recipe import compress
    try:
        pruned, report = compress(model, data, args.target, criterion=args.criterion, method=args.method,
                                  round_to=args.round_to, budget=args.budget, lr=args.lr, metric=args.metric,
                                  seed=args.seed, device=args.device, verify=not args.no_verify,
                                  progress=not args.quiet)
        report = dataclasses.replace(report, weights=args.weights)  # loaded above, where its errors are named
        write_outputs(args.out, pruned, report, data, original=model, builder=args.builder, rounds=args.rounds,
                      threads=args.threads, overwrite=args.overwrite, progress=not args.quiet)
    except Exception as e:  # noqa: BLE001 - say what failed; nothing was written
        print(f"gmlib compress: failed, nothing written to {args.out}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print((Path(args.out) / "card.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
