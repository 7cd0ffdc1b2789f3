rule pair_by_ssim:
    input:
        truth=rules.finetune_victim.output.truth,
        images=rules.simulate_and_reconstruct.output.images,
    output:
        metrics=f"{RUN}/evaluate/metrics.json",
        pairs=f"{RUN}/evaluate/pairs.csv",
    conda:
        ENV
    log:
        f"{RUN}/logs/pair.log",
    shell:
        "simudy --log {log} pair --victim-dir $(dirname {input.truth})"
        " --reconstruct-dir $(dirname {input.images}) --out-dir $(dirname {output.metrics})"


rule report:
    input:
        truth=rules.finetune_victim.output.truth,
        images=rules.simulate_and_reconstruct.output.images,
        loss=rules.simulate_and_reconstruct.output.loss,
        metrics=rules.pair_by_ssim.output.metrics,
    output:
        figure=report(f"{RUN}/report/figure.png", category="reconstructions"),
        loss=report(f"{RUN}/report/loss.png", category="loss curves"),
        row=f"{RUN}/report/row.csv",
    params:
        registry=REGISTRY,
        evaluate=section("evaluate"),
    conda:
        ENV
    log:
        f"{RUN}/logs/report.log",
    shell:
        "simudy --log {log} report --registry {params.registry}"
        " --experiment {wildcards.experiment} --profile {wildcards.profile}"
        " --victim-dir $(dirname {input.truth}) --reconstruct-dir $(dirname {input.images})"
        " --evaluate-dir $(dirname {input.metrics}) --out-dir $(dirname {output.row})"


rule table:
    input:
        rows=[f"results/{e}/{{profile}}/report/row.csv" for e in REG.experiments],
    output:
        "results/table_{profile}.md",
    conda:
        ENV
    log:
        "results/logs/table_{profile}.log",
    shell:
        "simudy --log {log} table --out {output} {input.rows}"
