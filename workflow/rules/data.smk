rule data_source:
    """Where the dataset's data comes from (a local copy's path, size and modification time, or
    the download's URL and checksum): fetch_data's input, so that switching SIMUDY_DATA_<NAME> to
    another copy rebuilds the dataset file. Snakemake reruns it when the record (a param) changes;
    DVC runs it every time and reruns fetch_data only when its output changed."""
    input:
        code=code("data_source"),
    output:
        update("results/data/{dataset}.source.json"),
    params:
        registry=REGISTRY,
        tracked=tracked("data_source"),
        record=lambda w: json.dumps(data.source_record(w.dataset, REG.datasets[w.dataset]), sort_keys=True),
    conda:
        ENV
    log:
        "results/logs/data_source/{dataset}.log",
    shell:
        cli("data-source --registry {params.registry:q} --dataset {wildcards.dataset} --out {output:q}")


rule fetch_data:
    input:
        source=rules.data_source.output,
        code=code("fetch_data"),
    output:
        update("results/data/{dataset}.npz"),
    params:
        registry=REGISTRY,
        tracked=tracked("fetch_data"),
    conda:
        ENV
    log:
        "results/logs/fetch_data/{dataset}.log",
    benchmark:
        "results/benchmarks/fetch_data/{dataset}.tsv"
    shell:
        cli("fetch-data --registry {params.registry:q} --dataset {wildcards.dataset} --out {output:q}")
