# `snakemake bench`: the simulator benchmark (bench/settings.yaml) -> results/bench/bench.md;
# `snakemake bench_precision`: float32 rounding against float64 -> results/bench/precision.md.
# Its quality cases need their experiments' victims, which this rule builds first.

rule bench:
    input:
        settings=BENCH_SETTINGS,
        victims=bench_victims,
    output:
        table="results/bench/bench.md",
        csv="results/bench/bench.csv",
        json="results/bench/bench.json",
    resources:
        gpu=1,
    conda:
        ENV
    threads: workflow.cores
    log:
        "results/bench/bench.log",
    shell:
        "simudy --log {log} bench --settings {input.settings} --out-dir $(dirname {output.table})"


rule bench_precision:
    input:
        settings=BENCH_SETTINGS,
    output:
        table="results/bench/precision.md",
    conda:
        ENV
    threads: workflow.cores
    log:
        "results/bench/precision.log",
    shell:
        "simudy --log {log} bench-precision --settings {input.settings} --out-dir $(dirname {output.table})"
