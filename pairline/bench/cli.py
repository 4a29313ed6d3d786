"""`pairline bench ...`: measurements, printed as tables and saved as JSON.

Subcommands: `engine` (pairline's runtimes against llama.cpp and HF transformers on the same
weights), `overhead` (transport and session cost), `edit` (real edits end to end), `cancel`
(cancel latency inside a long prefill), `typeahead` (TTFT after Enter with prefill ahead) and `fim`
(inline suggestions while typing, and infill accuracy)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="measure latency and throughput; print tables, save JSON")
    sub = parser.add_subparsers(dest="bench_command", metavar="BENCH")
    sub.required = True

    eng = sub.add_parser(
        "engine",
        help="load, TTFT, decode tok/s, verify cost, edit throughput: pairline on each runtime vs llama.cpp and HF",
        description="Runs pairline on each runtime and, in the same command, its CPU peers on the same GGUF "
        "(llama-cpp-python's own Llama, plain and with prompt lookup; HF transformers fp32 and bf16), each in "
        "its own worker process, side by side; prints tables, issue 3's goals, and writes JSON.",
    )
    eng.add_argument("--model", "-m", required=True, help="registry name, .gguf path or HF model directory")
    eng.add_argument(
        "--engines",
        default=None,
        help="comma-separated, from: pairline (the configuration pairline picks here, the split runtime "
        "included), pairline-llamacpp, pairline-torch, llamacpp, llamacpp-lookup, hf-fp32, hf-bf16 (default: all "
        "that can run here; the llama.cpp ones need llama-cpp-python)",
    )
    eng.add_argument(
        "--edit-engines",
        default=None,
        help="which of the engines run the edit tasks (default: all but HF, which does not take part in them)",
    )
    eng.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bf16", "fp32"],
        help="pairline-torch's dtype; auto: the runtime's default (bf16 on CPU)",
    )
    eng.add_argument(
        "--quant",
        default=None,
        choices=["auto", "none", "int8"],
        help="pairline-torch's weights: auto = the runtime's default (int8 on CPU with bf16), none = the dtype itself",
    )
    eng.add_argument(
        "--repeats", type=int, default=None, help="repeats per measurement, medians reported (default 3; quick 1)"
    )
    eng.add_argument("--out", default=None, help="JSON file or folder (default: bench-results/)")
    eng.add_argument("--quick", action="store_true", help="small sizes and one repeat (a smoke test)")
    eng.add_argument("--n-ctx", type=int, default=None, help="context for every engine (default 4096; quick 1024)")
    eng.add_argument("--edit-tasks", default=None, help="comma-separated edit task names (default: all)")
    eng.add_argument(
        "--edit-modes",
        default=None,
        help="pairline's: plain,prediction,prompt_lookup,useless_prediction,ceiling (default: all); "
        "the llama.cpp peers always run theirs (plain, prompt lookup)",
    )
    eng.add_argument("--edit-repeats", type=int, default=None, help="repeats for the edit tasks (default: --repeats)")
    eng.add_argument("--useless-seed", type=int, default=None, help="seed of the random useless prediction (0)")
    eng.add_argument("--threads", type=int, default=None, help="threads in every engine (default: each its own)")
    eng.add_argument(
        "--omp-wait-policy",
        choices=["passive", "active"],
        default=None,
        help="OMP_WAIT_POLICY for the engine processes; passive keeps idle OpenMP threads from spinning, "
        "which matters on a CPU shared with other work",
    )
    eng.add_argument(
        "--phases",
        default=None,
        help="comma-separated: engine (load, TTFT, decode, all engines), verify (k-token forward cost, pairline), "
        "edit (edit tasks); default: all",
    )
    eng.set_defaults(func=cmd_engine)

    ovh = sub.add_parser(
        "overhead",
        help="per-turn transport and state cost: HTTP+SSE (new connection / keep-alive) vs the WebSocket session",
        description="A 10-turn coding session over a ~2k-token file against a fresh `pairline serve`, three ways "
        "side by side; then N concurrent WebSocket sessions. Prints tables and writes JSON.",
    )
    ovh.add_argument("--model", "-m", default="smollm2-135m", help="registry name or path (default smollm2-135m)")
    ovh.add_argument("--turns", type=int, default=10)
    ovh.add_argument("--max-tokens", type=int, default=48, help="tokens per answer (default 48)")
    ovh.add_argument("--file-tokens", type=int, default=2000, help="size of the file in the first turn")
    ovh.add_argument("--ctx", type=int, default=8192, help="server context size")
    ovh.add_argument("--load-sessions", type=int, default=4, help="concurrent WebSocket sessions (0: no load run)")
    ovh.add_argument("--load-seconds", type=float, default=30.0)
    ovh.add_argument("--threads", type=int, default=None, help="PAIRLINE_THREADS for the server process")
    ovh.add_argument("--server", default=None, help="use a running server (http://HOST:PORT) instead of starting one")
    ovh.add_argument("--out", default=None, help="JSON file or folder (default: bench-results/)")
    ovh.set_defaults(func=cmd_overhead)

    from pairline.bench.edit import add_parser as add_edit_parser

    add_edit_parser(sub)  # `pairline bench edit`

    from pairline.bench.cancel import add_parser as add_cancel_parser

    add_cancel_parser(sub)  # `pairline bench cancel`

    from pairline.bench.typeahead import add_parser as add_typeahead_parser

    add_typeahead_parser(sub)  # `pairline bench typeahead`

    from pairline.bench.fim import add_parser as add_fim_parser

    add_fim_parser(sub)  # `pairline bench fim`

    from pairline.bench.app import add_parser as add_app_parser

    add_app_parser(sub)  # `pairline bench app`

    from pairline.bench.fleet import add_parser as add_fleet_parser

    add_fleet_parser(sub)  # `pairline bench fleet`


def cmd_engine(args: argparse.Namespace) -> int:
    from pairline.bench.common import csv, default_out_path, stderr_log, write_json
    from pairline.bench.engine import BenchConfig, command_line, run_engine_bench
    from pairline.bench.engine_report import print_tables

    err, log = stderr_log()
    kw = {"dtype": args.dtype, "command": command_line(args), "log": log}
    optional = {
        "engines": csv(args.engines),
        "edit_engines": csv(args.edit_engines),
        "quant": args.quant,
        "threads": args.threads,
        "omp_wait_policy": args.omp_wait_policy,
        "n_ctx": args.n_ctx,
        "edit_tasks": csv(args.edit_tasks),
        "edit_modes": csv(args.edit_modes),
        "edit_repeats": args.edit_repeats,
        "useless_seed": args.useless_seed,
        "phases": csv(args.phases),
        "repeats": args.repeats,
    }
    kw.update({k: v for k, v in optional.items() if v is not None})
    cfg = BenchConfig.quick_config(args.model, **kw) if args.quick else BenchConfig(model=args.model, **kw)
    paths: list = []

    def save(result: dict) -> None:  # after each phase too: a run killed halfway keeps what it measured
        if not paths:
            paths.append(default_out_path(args.out, args.model, "quick" if args.quick else None))
        write_json(result, paths[0])

    cfg.checkpoint = save
    result = run_engine_bench(cfg)
    save(result)
    print_tables(result)
    err.print(f"wrote {paths[0]}")
    return 0


def cmd_overhead(args: argparse.Namespace) -> int:
    from pairline.bench.common import default_out_path, invocation, stderr_log, write_json
    from pairline.bench.overhead import OverheadConfig, print_summary, run_overhead

    err, log = stderr_log()
    cfg = OverheadConfig(model=args.model, turns=args.turns, max_tokens=args.max_tokens, file_tokens=args.file_tokens,
                         n_ctx=args.ctx, load_sessions=args.load_sessions, load_seconds=args.load_seconds,
                         threads=args.threads, base_url=args.server, command=invocation(), log=log)
    result = run_overhead(cfg)
    path = default_out_path(args.out, args.model, kind="overhead")
    write_json(result, path)
    print_summary(result)
    err.print(f"wrote {path}")
    return 0
