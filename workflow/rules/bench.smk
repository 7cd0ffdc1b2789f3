# Simulator benchmarks, one suite per file bench/<suite>.yaml -> results/bench/<suite>/:
# `snakemake bench` runs the cpu suite (two CPU cores), `snakemake bench_gpu` the paper-scale
# suite for a CUDA machine; `snakemake bench_precision`: float32 rounding against float64.
# Quality cases need their experiments' victims, which the rule builds first.
BENCH = "results/bench/{suite}"


rule benchmark_suite:
    input:
        settings="bench/{suite}.yaml",
        victims=bench_victims,
        code=code("benchmark_suite"),
    output:
        table=update(f"{BENCH}/bench.md"),
        csv=update(f"{BENCH}/bench.csv"),
        json=update(f"{BENCH}/bench.json"),
    resources:
        gpu=1,
    conda:
        ENV
    threads: HEAVY
    log:
        f"{BENCH}/bench.log",
    benchmark:
        f"{BENCH}/benchmark.tsv"
    shell:
        cli("bench --settings {input.settings:q} --out-dir \"$(dirname {output.table:q})\"")


rule bench_projection:
    input:
        settings="bench/{suite}.yaml",
        bench=rules.benchmark_suite.output.csv,
        code=code("bench_projection"),
    output:
        table=update(report(f"{BENCH}/projection.md", caption="../report/projection.rst", category="tables",
                            labels={"table": "cost against dataset size", "suite": "{suite}"})),
        csv=update(f"{BENCH}/projection.csv"),
        json=update(f"{BENCH}/projection.json"),
    conda:
        ENV
    log:
        f"{BENCH}/projection.log",
    shell:
        cli("bench-projection --settings {input.settings:q} --bench {input.bench:q} --out-dir \"$(dirname {output.table:q})\"")


rule bench:
    input:
        "results/bench/cpu/bench.md",


# Tab. 3: cost against the dataset size at the paper's setting, projected to the paper's 30 000 steps.
rule tab3:
    input:
        "results/bench/tab3/projection.md",


rule bench_gpu:
    input:
        "results/bench/gpu/bench.md",


rule bench_precision:
    input:
        settings="bench/cpu.yaml",
        code=code("bench_precision"),
    output:
        table=update("results/bench/cpu/precision.md"),
    conda:
        ENV
    threads: HEAVY
    log:
        "results/bench/cpu/precision.log",
    shell:
        cli("bench-precision --settings {input.settings:q} --out-dir \"$(dirname {output.table:q})\"")
