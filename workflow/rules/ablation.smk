# Time-to-SSIM ablations (registry section `ablations`): `snakemake <ablation>` runs the
# paper's attack settings, each change on its own, all but one (leave_one_out) and all combined
# on the same victim, one job per run (resumable from its snapshots), then the table and the
# SSIM-against-time plot.
ABLATION = "results/ablation/{ablation}"


rule ablation_run:
    input:
        ablation_victim,
    output:
        curve=f"{ABLATION}/{{run}}/curve.csv",
        run=f"{ABLATION}/{{run}}/run.json",
    params:
        registry=REGISTRY,
        attack=lambda w: REG.ablation_attack(w.ablation, w.run).model_dump_json(),
        work=f"{ABLATION}/work/{{run}}",
    resources:
        gpu=1,
    conda:
        ENV
    threads: workflow.cores
    log:
        f"{ABLATION}/logs/{{run}}.log",
    benchmark:
        f"{ABLATION}/benchmarks/{{run}}.tsv"
    shell:
        "simudy --log {log} ablation-run --registry {params.registry} --ablation {wildcards.ablation}"
        " --run {wildcards.run} --victim-dir $(dirname {input}) --out-dir $(dirname {output.run})"
        " --work-dir {params.work}"


rule ablation_table:
    input:
        lambda w: [f"{ABLATION}/{run}/curve.csv".format(ablation=w.ablation) for run in REG.ablation(w.ablation).runs()],
    output:
        table=f"{ABLATION}/table.md",
        csv=f"{ABLATION}/table.csv",
        plot=report(f"{ABLATION}/curve.png", caption="../report/ablation.rst", category="ablations"),
    params:
        registry=REGISTRY,
    conda:
        ENV
    log:
        f"{ABLATION}/logs/table.log",
    shell:
        "simudy --log {log} ablation-table --registry {params.registry} --ablation {wildcards.ablation}"
        " --runs-root $(dirname {output.table}) --out-dir $(dirname {output.table})"


for _name in REG.ablations:

    rule:
        name:
            _name
        input:
            f"results/ablation/{_name}/table.md",
