"""``bench synth <system>``: write synthetic lesions into a real CT (LesionDiffusion).

Every argument is checked before torch is imported and before anything is written: the numbers,
the report (file, free choices through report-bbox's sampler, or an LLM endpoint), the CT and organ
map (readable, one voxel grid), the organ in the map, the report fitting there, the run folder
being a LesionDiffusion system, and the output folder (empty, or a batch with the same settings).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("ctsynth_bench")

#: systems with a ``bench synth`` implementation (their names are read from the registry)
_IMPLEMENTED = ("lesiondiffusion",)
MANIFEST = "lesiondiffusion.json"
MANIFEST_FORMAT = "ctsynth-lesiondiffusion"


def shipped_dir() -> Path:
    """Folder of the shipped demo LesionDiffusion system (package data)."""
    from importlib import resources

    return Path(str(resources.files("ctsynth_bench") / "_weights" / "lesiondiffusion_demo"))


def check_run_folder(run: str | Path | None) -> Path:
    """The LesionDiffusion run folder to load (``None``: the shipped one), checked without torch.

    Raises:
        SynthesisError: missing folder, or a folder that holds no LesionDiffusion system.
    """
    from ..lesiondiffusion.pipeline import SynthesisError

    folder = shipped_dir() if run is None else Path(run)
    what = "the shipped demo system" if run is None else f"run folder {folder}"
    if not folder.is_dir():
        if run is None:
            raise SynthesisError(
                "the shipped demo weights are not installed (no _weights/lesiondiffusion_demo in "
                "ctsynth_bench); pass --run RUN, a folder made by 'bench run lesiondiffusion "
                "--train' or 'bench train lesiondiffusion'"
            )
        raise SynthesisError(f"{what} does not exist")
    man = folder / MANIFEST
    if not man.is_file():
        others = sorted(p.name for p in folder.glob("*.json"))[:4]
        hint = f" (it holds {', '.join(others)})" if others else ""
        raise SynthesisError(
            f"{what} is not a LesionDiffusion run: no {MANIFEST}{hint}; make one with "
            "'bench run lesiondiffusion --out DIR' or 'bench train lesiondiffusion'"
        )
    try:
        fmt = json.loads(man.read_text()).get("format")
    except (json.JSONDecodeError, AttributeError):
        raise SynthesisError(f"{man} is not a valid JSON manifest") from None
    if fmt != MANIFEST_FORMAT:
        raise SynthesisError(
            f"{man}: format {fmt!r}, expected {MANIFEST_FORMAT!r} (a run of another system?)"
        )
    return folder


def identity_of(run: str | Path | None) -> dict[str, Any]:
    """The sidecar identity of the run folder's system, read from its manifest (no torch)."""
    from ..lesiondiffusion.pipeline import system_identity

    folder = check_run_folder(run)
    man = json.loads((folder / MANIFEST).read_text())
    preset = man.get("preset", {})
    return system_identity(
        None if run is None else folder,
        str(preset.get("name")),
        str(man.get("text_encoder", preset.get("text_encoder"))),
    )


def load_system(run: str | Path | None, *, device: str = "cpu") -> Any:
    """Load the checked run folder's system (imports torch)."""
    from ..lesiondiffusion.system import LesionDiffusionSystem

    folder = check_run_folder(run)
    return LesionDiffusionSystem.load(None if run is None else folder, device=device)


def _parse_sets(items: list[str] | None) -> dict[str, str]:
    from ..lesiondiffusion.pipeline import SynthesisError

    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise SynthesisError(f"--set takes ATTR=VALUE (e.g. density=hypodense), got {item!r}")
        out[key.strip()] = value.strip()
    return out


def report_source(args: argparse.Namespace) -> Any:
    """The :class:`ReportSource` of the arguments, validated (no torch)."""
    import numpy as np
    import report_bbox

    from ..lesiondiffusion.pipeline import ReportSource, SynthesisError

    fixed = _parse_sets(args.set)
    given = [name for name, v in (("--report", args.report), ("--llm", args.llm)) if v]
    if len(given) > 1:
        raise SynthesisError(
            "give one of --report, --llm or --organ/--lesion-type, not both " + " and ".join(given)
        )
    if args.report:
        if args.organ or args.lesion_type or fixed:
            raise SynthesisError(
                "--report takes the whole report; drop --organ, --lesion-type and --set"
            )
        path = Path(args.report)
        if not path.is_file():
            raise SynthesisError(f"--report {path} does not exist")
        try:
            report = report_bbox.Report.from_json(path.read_text())
        except (report_bbox.ReportError, ValueError) as exc:
            raise SynthesisError(f"--report {path}: {str(exc).splitlines()[0]}") from None
        return ReportSource(report=report)
    try:
        if args.llm:
            writer = report_bbox.OpenAIChatReportWriter(base_url=args.llm, model=args.llm_model)
            source = ReportSource(
                lesion_type=args.lesion_type, organ=args.organ, fixed=fixed, writer=writer
            )
        elif args.organ or args.lesion_type:
            source = ReportSource(lesion_type=args.lesion_type, organ=args.organ, fixed=fixed)
        else:
            raise SynthesisError(
                "say what to make: --report R.json, --organ O / --lesion-type T [--set ATTR=VALUE], "
                "or --llm URL"
            )
        # the choices must make a report at all (vocabulary, type, contradictions)
        report_bbox.sample_report(
            np.random.default_rng(0), lesion_type=args.lesion_type, organ=args.organ, **fixed
        )
    except (report_bbox.ReportError, report_bbox.OrganError, report_bbox.ReportWriterError) as exc:
        raise SynthesisError(str(exc).splitlines()[0]) from None
    return source


def _cmd_synth_lesiondiffusion(args: argparse.Namespace) -> int:
    from ..lesiondiffusion.pipeline import (
        SynthesisError,
        batch_settings,
        case_seeds,
        check_options,
        check_organ_present,
        load_ct_input,
        place_lesion,
        prepare_output,
        rank_and_world,
        synthesize_cases,
    )

    check_options(n=args.n, seed=args.seed, steps=args.steps, guidance=args.guidance)
    if args.threads is not None and args.threads < 1:
        raise SynthesisError(f"--threads must be >= 1, got {args.threads}")
    rank, world = rank_and_world()
    source = report_source(args)
    check_run_folder(args.run)
    inp = load_ct_input(args.ct, args.organs)
    organ = source.organ_name()
    if organ is not None:
        check_organ_present(inp, organ)
    if source.writer is None:
        place_lesion(source, inp, case_seeds(args.seed, 0)[0])  # the report fits (no writes)
    out = Path(args.out)
    prepare_output(
        out,
        batch_settings(
            identity_of(args.run),
            inp,
            source,
            seed=args.seed,
            steps=args.steps,
            guidance=args.guidance,
            prefix="ld_",
        ),
    )
    import torch  # after every check: loading the system is the first heavy step

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "cuda" and world > 1:  # one GPU per torchrun process
        import os

        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    system = load_system(args.run, device=device)
    summary = synthesize_cases(
        system,
        inp,
        source,
        out=out,
        n=args.n,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        rank=rank,
        world=world,
        progress=not args.quiet and rank == 0,
    )
    where = f" (rank {rank} of {world})" if world > 1 else ""
    print(
        f"{out}: wrote {len(summary.written)}, kept {len(summary.kept)} finished, failed {len(summary.failed)}"
        f"{where}; CT imagesTr/, lesion labelsTr/, organs/, reports/"
    )
    for case, why in summary.failed.items():
        print(f"  {case}: {why}", file=sys.stderr)
    if summary.timings and summary.written:
        per = {k: v / len(summary.written) for k, v in summary.timings.items()}
        print("seconds per lesion: " + ", ".join(f"{k} {v:.2f}" for k, v in per.items()))
    return 0 if not summary.failed else 1


def _add_lesiondiffusion(sub: argparse._SubParsersAction, description: str) -> None:
    p = sub.add_parser(
        "lesiondiffusion",
        help=description,
        description="Synthesize lesions into a real CT: report -> box in the organ -> LMNet mask -> LINet "
        "inpainting on a crop -> feathered paste. The output CT keeps the input's affine, shape and header; "
        "voxels outside the paste are bit-identical. --n K is resumable and split across torchrun ranks.",
    )
    p.add_argument(
        "--run",
        help="run folder (bench run/train lesiondiffusion); default: the shipped demo system",
    )
    p.add_argument("--ct", required=True, help="CT NIfTI (HU)")
    p.add_argument(
        "--organs", required=True, help="TotalSegmentator v2 organ map NIfTI on the CT's grid"
    )
    p.add_argument("--report", help="report JSON (report_bbox.Report fields)")
    p.add_argument("--organ", help="organ name (e.g. liver, kidney_left, lung)")
    p.add_argument("--lesion-type", help="lesion type (e.g. liver_cancer, kidney_cyst)")
    p.add_argument(
        "--set", action="append", metavar="ATTR=VALUE", help="fix a report attribute (repeatable)"
    )
    p.add_argument("--llm", metavar="URL", help="OpenAI-compatible endpoint that writes the report")
    p.add_argument("--llm-model", help="model name for --llm (default $REPORT_BBOX_LLM_MODEL)")
    p.add_argument("--n", type=int, default=1, help="number of cases (default 1)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the preset's)")
    p.add_argument(
        "--guidance", type=float, default=None, help="guidance scale (default: the preset's)"
    )
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", required=True, help="output dataset folder (nnU-Net layout)")
    p.set_defaults(func=_cmd_synth_lesiondiffusion)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench synth <system>`` for each registered system that implements it."""
    from ..systems import SYSTEMS

    parser = sub.add_parser(
        "synth",
        help="synthesize with a full system (lesiondiffusion, guidegen, text2lesion)",
        description="Synthesize with a full system; see 'bench synth SYSTEM -h'.",
    )
    parser.set_defaults(group_parser=parser)
    systems = parser.add_subparsers(dest="system", metavar="SYSTEM")
    for name, system in SYSTEMS.items():
        if name == "lesiondiffusion" and name in _IMPLEMENTED:
            _add_lesiondiffusion(systems, system.description)
