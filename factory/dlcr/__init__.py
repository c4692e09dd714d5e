"""DLCR clothes-changing expansion (docs/METHODS.md §3): `factory inpaint`.

Stages, each a small class that is set up once and then fed batches:

- `masks`: a human parser (a segmentation model, precomputed LIP label maps, or the
  procedural world's ground truth) and DLCR's rule for which labels are clothes;
- `wardrobe`: one text prompt per outfit (VLM answers summarised by an LLM, the world's
  attribute descriptions, or a user's file), cached by outfit id;
- `targets`: which other identities' outfits each source image is dressed in;
- `inpainter`: an SD inpainting pipeline and the paste-back of native pixels;
- `actor`: the Ray actor that runs parser and inpainter over a task's source images;
- `spec`, `tasks`, `writer` and `run`: the job spec, the plan, shards and the driver, on
  the same engine as `generate` (`factory.engine.shards`, `factory.engine.pools`).
"""
