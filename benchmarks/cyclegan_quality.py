"""CycleGAN quality on held-out images of both domains, next to the untrained generators (same config, seed 0):
the share of translations a real-A-vs-real-B domain classifier labels as the target domain, the cycle
reconstruction error and the identity error (`custom_pipelines.evaluation.translation`). Writes
<output_dir>/cyclegan_quality.{json,md} and cyclegan_examples.png (rows: A | A→B | A→B→A | B | B→A | B→A→B).

    python benchmarks/cyclegan_quality.py --pipeline runs/demo-cyclegan --dataset_name digits-thick
"""

from __future__ import annotations

import argparse
import json
import os


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pipeline", required=True, help="CycleGANPipeline folder (a train_cyclegan.py output)")
    parser.add_argument("--dataset_name", default="digits-thick", help="the built-in pair it was trained on")
    parser.add_argument("--resolution", type=int, default=None, help="default: the run's training_recipe.json")
    parser.add_argument("--num_images", type=int, default=256, help="held-out images per domain (at most)")
    parser.add_argument("--seed", type=int, default=0, help="the run's --seed (the held-out split follows it)")
    parser.add_argument("--output_dir", default=None, help="default: <pipeline>/quality")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    import torch

    from custom_pipelines.data.loading import ImageTransform
    from custom_pipelines.data.unpaired import ImageDomain, load_unpaired_domains
    from custom_pipelines.evaluation.translation import fit_domain_classifier, translation_scores
    from custom_pipelines.gan.cyclegan import CycleGANGenerator
    from custom_pipelines.io import save_image, write_json
    from custom_pipelines.pipelines.pipeline_cyclegan import CycleGANPipeline
    from custom_pipelines.training.reporting import image_grid

    pipe = CycleGANPipeline.from_pretrained(args.pipeline)
    resolution = args.resolution
    if resolution is None:
        with open(os.path.join(args.pipeline, "training_recipe.json"), encoding="utf-8") as f:
            resolution = int(json.load(f)["resolution"])
    channels = pipe.generator_a_to_b.config.in_channels
    domains = load_unpaired_domains(args.dataset_name, resolution=resolution, seed=args.seed)
    transform = ImageTransform(resolution, channels, center_crop=True)

    def stack(dataset, count=None):
        domain = ImageDomain(dataset, transform)
        return domain.first(len(domain) if count is None else count)

    classifier = fit_domain_classifier(stack(domains.train_a), stack(domains.train_b), seed=args.seed)
    test_a, test_b = stack(domains.test_a, args.num_images), stack(domains.test_b, args.num_images)

    torch.manual_seed(0)
    untrained = {name: CycleGANGenerator.from_config(getattr(pipe, name).config).eval()
                 for name in ("generator_a_to_b", "generator_b_to_a")}  # fmt: skip
    runs = {
        "untrained": (untrained["generator_a_to_b"], untrained["generator_b_to_a"]),
        "trained": (pipe.generator_a_to_b.eval(), pipe.generator_b_to_a.eval()),
    }
    scores = {name: translation_scores(g_ab, g_ba, test_a, test_b, classifier) for name, (g_ab, g_ba) in runs.items()}

    output_dir = args.output_dir or os.path.join(args.pipeline, "quality")
    os.makedirs(output_dir, exist_ok=True)
    report = {"pipeline": args.pipeline, "dataset_name": args.dataset_name, "resolution": resolution,
              "held_out_images": [len(test_a), len(test_b)], "scores": scores}  # fmt: skip
    write_json(os.path.join(output_dir, "cyclegan_quality.json"), report)
    keys = list(scores["trained"])
    lines = ["| run | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    lines += [f"| {name} | " + " | ".join(f"{row[k]:.3f}" for k in keys) + " |" for name, row in scores.items()]
    with open(os.path.join(output_dir, "cyclegan_quality.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")

    with torch.no_grad():
        g_ab, g_ba = runs["trained"]
        a, b = test_a[:8], test_b[:8]
        fake_b, fake_a = g_ab(a), g_ba(b)
        columns = [a, fake_b, g_ba(fake_b), b, fake_a, g_ab(fake_a)]
        rows = torch.stack(columns, 1).flatten(0, 1)  # row i: the six pictures of example i
    save_image(image_grid((rows.clamp(-1, 1) + 1) / 2, nrow=6), os.path.join(output_dir, "cyclegan_examples.png"))
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main(parse_args())
