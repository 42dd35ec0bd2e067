"""``bench synth text2lesion``: a GuideGen torso from a prompt with a LesionDiffusion lesion in it.

    bench synth text2lesion --prompt "..." [--report R.json | --lesion-type T | --organ O]
                            [--set ATTR=VALUE] [--n K] [--seed S] [--spacing MM] [--steps N]
                            [--gg-steps N] [--run-guidegen DIR|shipped]
                            [--run-lesiondiffusion DIR|shipped] --out DIR
    bench synth text2lesion --ct CT --organs ORGANS [--report ... | --lesion-type ...] --out DIR

Every option, the report, the runs and the output folder are checked before a model loads; the
cases are made in memory and written at the end, so an error writes nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

from .guidegen import _group


def _check(args: argparse.Namespace) -> None:
    from ..lesiondiffusion.pipeline import check_options
    from ..text2lesion import MAX_N, Text2LesionError

    if args.prompt is not None and args.ct is not None:
        raise Text2LesionError(
            "give either --prompt (a GuideGen torso) or --ct CT --organs ORGANS (your CT), not both"
        )
    if args.prompt is None and args.ct is None:
        raise Text2LesionError(
            'say where the lesion goes: --prompt "..." (a GuideGen torso) or --ct CT --organs ORGANS'
        )
    if (args.ct is None) != (args.organs is None):
        raise Text2LesionError(
            "--ct and --organs go together (a CT and its TotalSegmentator v2 map)"
        )
    if args.ct is not None:
        given = [
            f"--{k.replace('_', '-')}"
            for k in ("spacing", "gg_steps", "run_guidegen")
            if getattr(args, k) is not None
        ]
        if given:
            raise Text2LesionError(
                f"{', '.join(given)} only apply to a --prompt torso; drop them with --ct"
            )
    check_options(n=args.n, seed=args.seed, steps=args.steps, guidance=args.guidance)
    if args.n > MAX_N:
        raise Text2LesionError(
            f"--n must be at most {MAX_N} (cases are kept in memory until written), got {args.n}"
        )
    if args.spacing is not None and (
        not math.isfinite(args.spacing) or not 0.5 <= args.spacing <= 12
    ):
        raise Text2LesionError(
            f"--spacing must be a voxel size in mm in 0.5..12, got {args.spacing}"
        )
    if args.threads is not None and args.threads < 1:
        raise Text2LesionError(f"--threads must be >= 1, got {args.threads}")
    if args.gg_steps is not None and not 1 <= args.gg_steps <= 1000:
        raise Text2LesionError(f"--gg-steps must be an integer in 1..1000, got {args.gg_steps}")


def _cmd(args: argparse.Namespace) -> int:
    from ..text2lesion import (
        DEFAULT_SPACING_MM,
        check_out,
        default_lesion_type,
        lesion_in_ct,
        resolve_run,
        summary_line,
        text2lesion,
        write_cases,
    )
    from .synth import check_run_folder, report_source

    _check(args)
    fields = None
    if args.prompt is not None:
        from ..guidegen.prompts import parse_prompt

        fields = parse_prompt(args.prompt)
        if not (args.report or args.lesion_type or args.organ):
            args.lesion_type = default_lesion_type(fields.site)
    args.llm = None
    source = report_source(args)
    ld_run = resolve_run("lesiondiffusion", args.run_lesiondiffusion)
    check_run_folder(ld_run)
    gg_run = resolve_run("guidegen", args.run_guidegen) if fields is not None else None
    inp = None
    if args.ct is not None:
        from ..lesiondiffusion.pipeline import (
            case_seeds,
            check_organ_present,
            load_ct_input,
            place_lesion,
        )

        inp = load_ct_input(args.ct, args.organs)
        organ = source.organ_name()
        if organ is not None:
            check_organ_present(inp, organ)
        place_lesion(source, inp, case_seeds(args.seed, 0)[0])  # the report fits
    out = check_out(args.out)

    import torch  # after every check: loading the systems is the first heavy step

    from .synth import load_system as load_ld

    if args.threads:
        torch.set_num_threads(args.threads)
    elif (os.cpu_count() or 1) <= 2:  # as the training engine: one thread on a 2-core machine
        torch.set_num_threads(1)
    t = time.time()
    ld = load_ld(ld_run)
    spacing = args.spacing if args.spacing is not None else DEFAULT_SPACING_MM
    settings = {
        "mode": "text2lesion" if inp is None else "lesiondiffusion",
        "prompt": args.prompt,
        "report_source": source.describe(),
        "n": args.n,
        "seed": args.seed,
        "steps": args.steps,
        "guidance": args.guidance,
        "run_lesiondiffusion": str(ld_run) if ld_run else "shipped",
    }
    if inp is None:
        from ..guidegen.system import load_system as load_gg

        gg = load_gg(gg_run)
        settings.update(
            run_guidegen=str(gg_run) if gg_run else "shipped",
            spacing_mm=spacing,
            gg_steps=args.gg_steps,
        )
        cases = text2lesion(
            gg,
            ld,
            args.prompt,
            source,
            n=args.n,
            seed=args.seed,
            spacing=spacing,
            steps=args.steps,
            guidance=args.guidance,
            gg_steps=args.gg_steps,
        )
    else:
        settings["ct"] = str(args.ct)
        cases = lesion_in_ct(
            ld, inp, source, n=args.n, seed=args.seed, steps=args.steps, guidance=args.guidance
        )
    write_cases(out, cases, settings=settings)
    print(summary_line(cases))
    print(
        f"{out}: {len(cases)} cases ({time.time() - t:.0f} s); guidegen "
        f"{settings.get('run_guidegen', '-')}, lesiondiffusion {settings['run_lesiondiffusion']}; "
        "CT imagesTr/, labels (GuideGen ids, lesion 21) labelsTr/, lesions/, organs/, torso/, "
        "meta/, preview/"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``text2lesion`` to the ``synth`` group."""
    p = _group(sub, "synth", "generate synthetic cases with a trained system").add_parser(
        "text2lesion",
        help="prompt -> GuideGen torso -> LesionDiffusion lesion (or a lesion in your CT)",
        description="A GuideGen torso CT and label map from --prompt, then a LesionDiffusion lesion "
        "inpainted where the report says (inside the report's organ, never over GuideGen's tumour). "
        "With --ct CT --organs ORGANS instead of a prompt: plain LesionDiffusion. Outputs share one "
        "grid: imagesTr/ (CT with lesion), labelsTr/ (GuideGen ids 0-20, lesion 21), lesions/, "
        "organs/ (TotalSegmentator v2 map used), torso/ (CT before), meta/ (both texts, seeds, "
        "runs, geometry), preview/ (PNG).",
    )
    p.add_argument("--prompt", help="GuideGen prompt (its template; see 'bench synth guidegen -h')")
    p.add_argument("--ct", type=Path, help="your CT NIfTI (HU), instead of --prompt")
    p.add_argument("--organs", type=Path, help="TotalSegmentator v2 organ map on --ct's grid")
    p.add_argument("--report", help="lesion report JSON (report_bbox.Report fields)")
    p.add_argument(
        "--lesion-type",
        help="lesion type (e.g. liver_cancer, kidney_cyst); default with --prompt: the prompt "
        "site's cancer",
    )
    p.add_argument("--organ", help="organ name (e.g. liver, kidney_left)")
    p.add_argument(
        "--set", action="append", metavar="ATTR=VALUE", help="fix a report attribute (repeatable)"
    )
    p.add_argument("--n", type=int, default=1, help="cases (default 1)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument(
        "--spacing",
        type=float,
        default=None,
        help="torso voxel size in mm, 0.5..12 (default 3; the demo GuideGen CT is 12 mm)",
    )
    p.add_argument("--steps", type=int, default=None, help="LesionDiffusion DDIM steps")
    p.add_argument("--guidance", type=float, default=None, help="LesionDiffusion guidance")
    p.add_argument(
        "--gg-steps", type=int, default=None, help="GuideGen CT generator DDIM steps (default 50)"
    )
    p.add_argument(
        "--run-guidegen",
        help="GuideGen run folder, or 'shipped' (default: ./guidegen_run if it holds a system, "
        "else the shipped demo weights)",
    )
    p.add_argument(
        "--run-lesiondiffusion",
        help="LesionDiffusion run folder, or 'shipped' (default: ./lesiondiffusion_run if it "
        "holds a system, else the shipped demo weights)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    p.set_defaults(func=_cmd)
