# The SimuDy pipeline: fetch-data -> pretrain -> finetune-victim -> reconstruct, per method (gpu=1)
#                      -> pair-by-SSIM -> report (methods side by side) / tables.
# Experiments and parameters come from the registry (params/experiments.yaml), the same file
# dvc.yaml reads. Rules only call the `simudy` CLI; all logic lives in src/simudy.
#   snakemake fig1 --cores all --resources gpu=1                 # fig1 at the active profile
#   snakemake fig1 --cores all --config profile=paper            # ... at the paper profile
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "workflow/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"


wildcard_constraints:
    experiment="|".join(REG.experiments),
    dataset="|".join(REG.datasets),
    profile=r"[A-Za-z0-9_]+",
    method=r"[A-Za-z0-9_]+",
    group="|".join(REG.groups) or "(?!)",
    ablation="|".join(REG.ablations) or "(?!)",
    linearity="|".join(REG.linearity) or "(?!)",
    run=r"[A-Za-z0-9_]+",
    suite=r"[A-Za-z0-9_]+",


rule all:
    default_target: True
    input:
        report_files("demo", PROFILE),


include: "workflow/rules/data.smk"
include: "workflow/rules/victim.smk"
include: "workflow/rules/reconstruct.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/targets.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/ablation.smk"
include: "workflow/rules/linearity.smk"
include: "workflow/rules/catalogue.smk"
