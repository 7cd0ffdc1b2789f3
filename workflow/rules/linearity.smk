# Linearity of training dynamics (registry section `linearity`; App. A, Tab. 1):
# `snakemake tab1` trains each of the table's networks and measures M_lin (Eq. 6) at the active
# profile (--config profile=paper for the paper's sizes), in one job.
LINEARITY = "results/{linearity}/{profile}"


rule linearity:
    input:
        data=lambda w: f"results/data/{REG.linearity[w.linearity].dataset}.npz",
        code=code("linearity"),
    output:
        table=update(f"{LINEARITY}/{{linearity}}.md"),
        csv=update(report(f"{LINEARITY}/{{linearity}}.csv", caption="../report/linearity.rst",
                   category="linearity", labels={"table": "{linearity}", "profile": "{profile}"})),
        metrics=update(f"{LINEARITY}/metrics.json"),
    params:
        registry=REGISTRY,
        settings=linearity_settings,
    resources:
        gpu=1,
    conda:
        ENV
    threads: HEAVY
    log:
        f"{LINEARITY}/logs/linearity.log",
    benchmark:
        f"{LINEARITY}/benchmarks/linearity.tsv"
    shell:
        cli(
            "linearity --registry {params.registry:q} --table {wildcards.linearity} --profile {wildcards.profile}"
            " --data {input.data:q} --out-dir \"$(dirname {output.table:q})\""
        )


for _name in REG.linearity:

    rule:
        name:
            _name
        input:
            f"results/{_name}/{PROFILE}/{_name}.md",
