"""--plot: latency and peak memory against length (log-log, one line per backend) and the speed-ups
over torch-lsg at the longest length, for the smallest batch size run; for encoder-decoders these are
the encoder's, and a fourth panel gives the generation's new tokens per second against length."""
from pathlib import Path


def plot(result, path, batch=None):
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    batch = batch or min(result.settings["batch_sizes"])
    ok = [c for c in result.cells if c.status == "ok" and c.batch == batch]
    names = [n for n in result.settings["backends"] if any(c.backend == n for c in ok)]
    seq2seq = result.target.get("seq2seq", False)
    figure, axes = plt.subplots(1, 4 if seq2seq else 3, figsize=(17 if seq2seq else 13, 4.2))
    latency, memory, bars = axes[:3]
    for name in names:
        cells = sorted((c for c in ok if c.backend == name), key=lambda c: c.length)
        style = dict(marker="o", markersize=3, linewidth=1.4, linestyle="-" if name.startswith("ort-") else "--")
        latency.plot([c.length for c in cells], [c.p50_ms for c in cells], label=name, **style)
        with_memory = [c for c in cells if c.peak_memory_mb]
        if with_memory:
            memory.plot([c.length for c in with_memory], [c.peak_memory_mb for c in with_memory], label=name, **style)
        generated = [c for c in cells if c.generate_tokens_per_s]
        if seq2seq and generated:
            axes[3].plot([c.length for c in generated], [c.generate_tokens_per_s for c in generated], label=name,
                         **style)
    panels = [(latency, f"{'encoder ' if seq2seq else ''}p50 latency (ms)"),
              (memory, f"peak memory (MB, {ok[0].memory_kind if ok else ''})")]
    if seq2seq:
        beams = result.settings.get("num_beams", 1)
        how = "greedy" if beams == 1 else f"{beams}-beam"
        panels.append((axes[3], f"{how} generation, new tokens/s ({result.settings['new_tokens']} tokens)"))
    for axis, label in panels:
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("tokens")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
    latency.legend(fontsize=7)

    longest = max((c.length for c in ok), default=None)
    at_longest = sorted((c for c in ok if c.length == longest and c.speedup_vs_torch_lsg),
                        key=lambda c: -c.speedup_vs_torch_lsg)
    bars.barh([c.backend for c in at_longest], [c.speedup_vs_torch_lsg for c in at_longest], color="tab:blue")
    bars.axvline(1.0, color="grey", linewidth=1)
    bars.invert_yaxis()
    for i, c in enumerate(at_longest):
        bars.text(c.speedup_vs_torch_lsg, i, f" {c.speedup_vs_torch_lsg:.2f}x", va="center", fontsize=8)
    bars.set_xlabel(f"{'encoder ' if seq2seq else ''}speed-up over torch-lsg at {longest} tokens")
    bars.tick_params(axis="y", labelsize=8)
    env = result.environment
    rounds = f", {result.settings['rounds']} rounds" if result.settings.get("rounds", 1) > 1 else ""
    figure.suptitle(f"{result.target['architecture']}, batch {batch}, {result.settings['device']}, "
                    f"{result.settings['threads']} threads{rounds} - {env['cpu']}"
                    f"{', ' + env['gpu'] if env['gpu'] else ''}, "
                    f"{env['date'][:10]}", fontsize=10)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    figure.savefig(tmp, dpi=80)
    plt.close(figure)
    tmp.replace(path)
    return path
