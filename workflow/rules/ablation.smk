# Time-to-SSIM ablations (registry section `ablations`): `snakemake <ablation>` runs the
# paper's attack settings, each change on its own, all but one (leave_one_out) and all combined
# on the same victim, one job per run (resumable from its snapshots), then the table and the
# SSIM-against-time plot.
ABLATION = "results/ablation/{ablation}"


rule ablation_run:
    input:
        victim=ablation_victim,
        code=code("ablation_run"),
    output:
        run=update(f"{ABLATION}/{{run}}/run.json"),
        curve=update(f"{ABLATION}/{{run}}/curve.csv"),
    params:
        registry=REGISTRY,
        attack=lambda w: REG.ablation_attack(w.ablation, w.run).model_dump_json(),
        work=f"{ABLATION}/work/{{run}}",
    resources:
        gpu=1,
    conda:
        ENV
    threads: HEAVY
    log:
        f"{ABLATION}/logs/{{run}}.log",
    benchmark:
        f"{ABLATION}/benchmarks/{{run}}.tsv"
    shell:
        cli(
            "ablation-run --registry {params.registry:q} --ablation {wildcards.ablation} --run {wildcards.run}"
            " --victim-dir \"$(dirname {input.victim:q})\" --out-dir \"$(dirname {output.run:q})\" --work-dir {params.work:q}"
        )


rule ablation_table:
    input:
        curves=lambda w: [f"{ABLATION}/{run}/curve.csv".format(ablation=w.ablation) for run in REG.ablation(w.ablation).runs()],
        code=code("ablation_table"),
    output:
        table=update(f"{ABLATION}/table.md"),
        csv=update(f"{ABLATION}/table.csv"),
        plot=update(report(f"{ABLATION}/curve.png", caption="../report/ablation.rst", category="ablations",
                    labels={"ablation": "{ablation}", "figure": "SSIM against time"})),
    params:
        registry=REGISTRY,
    conda:
        ENV
    log:
        f"{ABLATION}/logs/table.log",
    shell:
        cli(
            "ablation-table --registry {params.registry:q} --ablation {wildcards.ablation}"
            " --runs-root \"$(dirname {output.table:q})\" --out-dir \"$(dirname {output.table:q})\""
        )


for _name in REG.ablations:

    rule:
        name:
            _name
        input:
            f"results/ablation/{_name}/table.md",
