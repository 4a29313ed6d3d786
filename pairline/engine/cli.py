"""`pairline doctor`: the machine, the checked runtime configurations, and decode speed against the
bandwidth limit, in about 10 s. What a user runs when pairline is slow or refuses a runtime."""

from __future__ import annotations

import argparse
import json

from pairline.engine.load import add_runtime_option


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("doctor", help="the CPU, the checked runtimes and decode speed against the "
                                   "bandwidth limit (paste it into an issue report)")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b",
                        help="the model to load and time (default: %(default)s); 'none' for the machine only")
    add_runtime_option(parser)
    parser.add_argument("--tune", action="store_true",
                        help="also check and time the torch configurations (int8, bf16), so the runtime choice "
                             "can weigh them (the first time converts the model: a minute)")
    parser.add_argument("--recheck", action="store_true",
                        help="forget this model's checks on this machine and check again (after a driver, BIOS or "
                             "library change)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    from pairline.engine.doctor import diagnose

    model = None if args.model == "none" else args.model
    report = diagnose(model, tune=args.tune, recheck=args.recheck, runtime=args.runtime)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        _print(report)
    return 0


def _print(r) -> None:
    from rich.console import Console

    out = Console()
    out.print(f"[bold]CPU[/]   {r.cpu['model']} ({r.cpu['machine']}), {r.cpu['cores']} cores, {r.threads} threads used")
    out.print(f"[bold]flags[/] {r.cpu['flags'] or '(none of the vector extensions pairline looks for)'}")
    out.print(f"[bold]memory[/] {r.bandwidth_gb_s} GB/s read, measured now with {r.threads} threads")
    if r.model:
        out.print(f"[bold]model[/] {r.model}: runs on {r.configuration} (loaded in {r.load_s} s)")
        for phase, config in r.phases.items():
            out.print(f"  {phase:<8} {config}")
        if r.weight_bytes_per_token:
            mb = r.weight_bytes_per_token / 1e6
            out.print(f"[bold]decode[/] {r.decode_tok_s} tok/s; a step reads {mb:.0f} MB of weights, so the "
                      f"bandwidth limit is {r.limit_tok_s} tok/s: [bold]{100 * r.fraction_of_limit:.0f}% of it[/]")
        else:
            out.print(f"[bold]decode[/] {r.decode_tok_s} tok/s")
    out.print(f"[bold]checked on this machine[/] ({len(r.checks)}, newest first; engine/guard.py):")
    for c in r.checks:
        verdict = "ok     " if c["ok"] else f"REFUSED ({c['reason']})"
        speeds = f"prefill {_num(c['prefill_tok_s'])} tok/s, step {_num(c['step_ms'])} ms" if c["ok"] else ""
        cpu = "" if c["this_cpu"] else " [another CPU]"
        out.print(f"  {verdict} {c['configuration']} on {c['model']}: {speeds} ({c['when'][:16]}){cpu}",
                  soft_wrap=True)
    out.print(f"doctor took {r.seconds} s")


def _num(x) -> str:
    return "" if x is None else f"{x:g}"
