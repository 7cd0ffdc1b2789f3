# The catalogue of the paper's experiments (`snakemake catalogue`): params/catalogue.yaml maps
# each to the pipeline's metrics files; the table puts the paper's value beside ours per profile,
# with the commit of each value. Its inputs are the metrics files that exist when the DAG is
# built, flagged before_update: Snakemake reruns the table when one changes (or one appears) but
# never runs an experiment to make one (the table reads committed results; it says where none
# exist yet).
CATALOGUE = "params/catalogue.yaml"


rule catalogue:
    input:
        catalogue=CATALOGUE,
        registry=REGISTRY,
        metrics=catalogue_metrics(CATALOGUE),
        code=code("catalogue"),
    output:
        table=update(report("results/catalogue.md", caption="../report/catalogue.rst", category="tables",
                     labels={"table": "the paper's experiments", "profile": "all"})),
        csv=update("results/catalogue.csv"),
    conda:
        ENV
    log:
        "results/logs/catalogue.log",
    shell:
        cli(
            "catalogue --registry {input.registry:q} --catalogue {input.catalogue:q} --results results"
            " --out-dir \"$(dirname {output.table:q})\""
        )
