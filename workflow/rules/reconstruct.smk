rule simulate_and_reconstruct:
    input:
        meta=victim_file("victim.json"),
        theta0=victim_file("theta0.safetensors"),
        thetaf=victim_file("thetaf.safetensors"),
        natural=natural_images,
        code=code("simulate_and_reconstruct"),
    output:
        run=update(f"{RUN}/reconstruct/{{method}}/run.json"),
        images=update(f"{RUN}/reconstruct/{{method}}/reconstruction.safetensors"),
        loss=update(f"{RUN}/reconstruct/{{method}}/loss.csv"),
    params:
        registry=REGISTRY,
        tracked=tracked("simulate_and_reconstruct"),
        # Snapshots live outside the declared outputs, which Snakemake deletes before a
        # rerun: a killed job resumes from them.
        work=f"{RUN}/work/{{method}}",
        natural=lambda w, input: "".join(f" --natural-images {shlex.quote(f)}" for f in input.natural),
    resources:
        gpu=1,
    conda:
        ENV
    threads: HEAVY
    log:
        f"{RUN}/logs/reconstruct_{{method}}.log",
    benchmark:
        f"{RUN}/benchmarks/reconstruct_{{method}}.tsv"
    shell:
        cli(
            "reconstruct --registry {params.registry:q} --experiment {wildcards.experiment}"
            " --profile {wildcards.profile} --method {wildcards.method} --victim-dir \"$(dirname {input.meta:q})\""
            " --out-dir \"$(dirname {output.images:q})\" --work-dir {params.work:q}{params.natural}"
            + SET_ARGS
        )
