rule pair_by_ssim:
    input:
        truth=victim_file("truth.npz"),
        images=rules.simulate_and_reconstruct.output.images,
        code=code("pair_by_ssim"),
    output:
        metrics=update(f"{RUN}/evaluate/{{method}}/metrics.json"),
        pairs=update(f"{RUN}/evaluate/{{method}}/pairs.csv"),
        dummies=update(f"{RUN}/evaluate/{{method}}/dummies.csv"),
    conda:
        ENV
    log:
        f"{RUN}/logs/pair_{{method}}.log",
    benchmark:
        f"{RUN}/benchmarks/pair_{{method}}.tsv"
    shell:
        cli(
            "pair --victim-dir \"$(dirname {input.truth:q})\" --reconstruct-dir \"$(dirname {input.images:q})\""
            " --out-dir \"$(dirname {output.metrics:q})\""
        )


rule report:
    input:
        truth=victim_file("truth.npz"),
        runs=per_method(f"{RUN}/reconstruct/{{method}}/run.json"),
        metrics=per_method(f"{RUN}/evaluate/{{method}}/metrics.json"),
        dummies=per_method(f"{RUN}/evaluate/{{method}}/dummies.csv"),
        code=code("report"),
    output:
        rows=update(f"{RUN}/report/rows.csv"),
        figure=update(report(f"{RUN}/report/figure.png", caption="../report/figure.rst", category="{experiment}",
                      subcategory="all methods", labels={"experiment": "{experiment}", "figure": "methods compared"})),
        loss=update(report(f"{RUN}/report/loss.png", caption="../report/loss.rst", category="{experiment}",
                    subcategory="all methods", labels={"experiment": "{experiment}", "figure": "loss curves"})),
        methods=report(directory(f"{RUN}/report/methods"), patterns=["{method}.png"],
                       caption="../report/method.rst", category="{experiment}", subcategory="per method",
                       labels={"experiment": "{experiment}", "figure": "{method}"}),
        metrics=update(f"{RUN}/metrics.json"),
    params:
        registry=REGISTRY,
        tracked=tracked("report"),
        paper=paper_value,
        reconstruct_root=f"{RUN}/reconstruct",
        evaluate_root=f"{RUN}/evaluate",
    conda:
        ENV
    log:
        f"{RUN}/logs/report.log",
    shell:
        cli(
            "report --registry {params.registry:q} --experiment {wildcards.experiment} --profile {wildcards.profile}"
            " --victim-dir \"$(dirname {input.truth:q})\" --reconstruct-root {params.reconstruct_root:q}"
            " --evaluate-root {params.evaluate_root:q} --out-dir \"$(dirname {output.rows:q})\" --metrics-out {output.metrics:q}"
            + SET_ARGS,
            outputs="{output.rows:q} {output.figure:q} {output.loss:q} {output.metrics:q}",
        )


rule sweep_report:
    input:
        truth=victim_file("truth.npz"),
        runs=per_method(f"{RUN}/reconstruct/{{method}}/run.json"),
        metrics=per_method(f"{RUN}/evaluate/{{method}}/metrics.json"),
        dummies=per_method(f"{RUN}/evaluate/{{method}}/dummies.csv"),
        code=code("sweep_report"),
    output:
        table=update(f"{RUN}/report/sweep.csv"),
        figure=update(report(f"{RUN}/report/sweep.png", caption="../report/sweep.rst", category="{experiment}",
                      subcategory="all methods", labels={"experiment": "{experiment}", "figure": "sweep"})),
        metrics=update(f"{RUN}/sweep.json"),
    params:
        registry=REGISTRY,
        tracked=tracked("sweep_report"),
        reconstruct_root=f"{RUN}/reconstruct",
        evaluate_root=f"{RUN}/evaluate",
    conda:
        ENV
    log:
        f"{RUN}/logs/sweep_report.log",
    shell:
        cli(
            "sweep-report --registry {params.registry:q} --experiment {wildcards.experiment} --profile {wildcards.profile}"
            " --victim-dir \"$(dirname {input.truth:q})\" --reconstruct-root {params.reconstruct_root:q}"
            " --evaluate-root {params.evaluate_root:q} --out-dir \"$(dirname {output.table:q})\""
            " --metrics-out {output.metrics:q}"
            + SET_ARGS,
        )


rule table:
    input:
        rows=lambda w: [f"results/{e}/{w.profile}/report/rows.csv" for e in REG.experiments if has_profile(e, w.profile)],
        code=code("table"),
    output:
        update(report("results/table_{profile}.md", caption="../report/table.rst", category="tables",
                      labels={"table": "all experiments", "profile": "{profile}"})),
    conda:
        ENV
    log:
        "results/logs/table_{profile}.log",
    shell:
        cli("table --out {output:q} -- {input.rows:q}")


rule group_table:
    input:
        rows=lambda w: [f"results/{e}/{w.profile}/report/rows.csv" for e in REG.groups[w.group].experiments],
        code=code("group_table"),
    output:
        update(report("results/{group}_{profile}.md", caption="../report/table.rst", category="tables",
                      labels={"table": "{group}", "profile": "{profile}"})),
    params:
        tracked=tracked("group_table"),
        methods=lambda w: REG.groups[w.group].methods,
    conda:
        ENV
    log:
        "results/logs/{group}_{profile}.log",
    shell:
        cli("table --out {output:q} --methods {params.methods:q} -- {input.rows:q}")
