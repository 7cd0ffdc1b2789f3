rule pair_by_ssim:
    input:
        truth=victim_file("truth.npz"),
        images=rules.simulate_and_reconstruct.output.images,
    output:
        metrics=f"{RUN}/evaluate/{{method}}/metrics.json",
        pairs=f"{RUN}/evaluate/{{method}}/pairs.csv",
    conda:
        ENV
    log:
        f"{RUN}/logs/pair_{{method}}.log",
    shell:
        "simudy --log {log} pair --victim-dir $(dirname {input.truth})"
        " --reconstruct-dir $(dirname {input.images}) --out-dir $(dirname {output.metrics})"


rule report:
    input:
        truth=victim_file("truth.npz"),
        runs=per_method(f"{RUN}/reconstruct/{{method}}/run.json"),
        metrics=per_method(f"{RUN}/evaluate/{{method}}/metrics.json"),
    output:
        figure=report(f"{RUN}/report/figure.png", category="reconstructions"),
        loss=report(f"{RUN}/report/loss.png", category="loss curves"),
        rows=f"{RUN}/report/rows.csv",
        metrics=f"{RUN}/metrics.json",
    params:
        registry=REGISTRY,
        evaluate=section("evaluate"),
        methods=lambda w: cfg(w).reconstruct.methods,
        reconstruct_root=f"{RUN}/reconstruct",
        evaluate_root=f"{RUN}/evaluate",
    conda:
        ENV
    log:
        f"{RUN}/logs/report.log",
    shell:
        "simudy --log {log} report --registry {params.registry}"
        " --experiment {wildcards.experiment} --profile {wildcards.profile}"
        " --victim-dir $(dirname {input.truth}) --reconstruct-root {params.reconstruct_root}"
        " --evaluate-root {params.evaluate_root} --out-dir $(dirname {output.rows}) --metrics-out {output.metrics}"


rule table:
    input:
        rows=[f"results/{e}/{{profile}}/report/rows.csv" for e in REG.experiments],
    output:
        "results/table_{profile}.md",
    conda:
        ENV
    log:
        "results/logs/table_{profile}.log",
    shell:
        "simudy --log {log} table --out {output} {input.rows}"


rule group_table:
    input:
        rows=lambda w: [f"results/{e}/{w.profile}/report/rows.csv" for e in REG.groups[w.group].experiments],
    output:
        "results/{group}_{profile}.md",
    params:
        methods=lambda w: " ".join(REG.groups[w.group].methods),
    conda:
        ENV
    log:
        "results/logs/{group}_{profile}.log",
    shell:
        "simudy --log {log} table --out {output} --methods {params.methods} -- {input.rows}"
