#!/usr/bin/env python3
"""Golden data for a tiny Stable Diffusion XL of the real topology, computed with the peer
implementations (diffusers + transformers + PyTorch) on CPU in float64.

Runs only where torch, transformers and a diffusers source tree are available (the GPU
machine; see tools/golden/README.md for the exact command). Every section is independent: a
failure is reported in generation_report_sdxl.json and the next section runs.

Inputs
  $TOKDIR/vocab.json, $TOKDIR/merges.txt   the CLIP vocabulary (../shared/golden has both;
                                            never committed to the project)
  $DIFFUSERS_SRC                            diffusers' src/ folder (put first on sys.path);
                                            its ../scripts/convert_diffusers_to_original_sdxl.py
                                            makes the single file when present
Outputs (into $OUT, default /tmp/golden_sdxl_out)
  tiny-sdxl/                         diffusers folder: unet, vae, text_encoder, text_encoder_2,
                                     tokenizer, tokenizer_2 (without vocab.json/merges.txt: the
                                     loader tests copy them in), scheduler, model_index.json
  tiny-sdxl_original.safetensors     the same weights in SGM's single-file layout (if the
                                     conversion script is found)
  golden_tiny-sdxl.safetensors       the golden tensors (float32; ids int64); names below
  merge_tiny-sdxl.safetensors        the merge golden (float64)
  generation_report_sdxl.json        versions, cross-checks, digests

The tiny model (seeds 4001 UNet, 4002 VAE, 4003 text encoder, 4004 text encoder 2; every
parameter overwritten as gen_golden_models.py does: norm scales 1 + 0.1 N, biases 0.1 N,
others N / sqrt(fan_in)):
  UNet   block_out (32, 64, 64), layers_per_block 2, DownBlock2D + CrossAttnDownBlock2D x2,
         CrossAttnUpBlock2D x2 + UpBlock2D, transformer_layers_per_block (1, 1, 2) (so depth 2
         at the lowest level and in the mid block), attention_head_dim (2, 4, 4) (head width
         16), linear projections, cross_attention_dim 40 (= 16 + 24), addition_embed_type
         "text_time", addition_time_embed_dim 8, projection_class_embeddings_input_dim
         24 + 6 * 8 = 72, norm_num_groups 8, sample_size 8
  VAE    as the tiny SD ones, scaling_factor 0.13025 (SDXL's)
  text_encoder    CLIPTextModel: width 16, 3 layers, 2 heads, MLP 32, quick_gelu
  text_encoder_2  CLIPTextModelWithProjection: width 24, 3 layers, 2 heads, MLP 48, gelu,
                  projection_dim 24
  tokenizers: pad <|endoftext|> (tokenizer) and "!" (tokenizer_2), as SDXL's own files
  scheduler: EulerDiscreteScheduler as in SDXL base 1.0 (scaled_linear 0.00085..0.012,
             timestep_spacing "leading", steps_offset 1, epsilon)

Golden tensor names (golden_tiny-sdxl.safetensors)
  text.input_ids, text.input_ids_2        [3, 77]  ids of the three text prompts per tokenizer
  text.hidden_states, text.hidden_states_2 [4, 3, 77, d]  embeddings and each layer's output
  text.text_embeds                         [3, 24]  text_encoder_2's pooled projected output
  text.prompt_embeds                       [3, 77, 40]  concat(hidden_states[-2] of both)
  unet.sample [2,4,8,8], unet.timesteps [2], unet.encoder_hidden_states [2,77,40],
  unet.text_embeds [2,24], unet.time_ids [2,6], unet.out, unet.dbg.{time_proj,
  time_embedding, add_time_proj, add_embedding, conv_in, down_blocks.i, mid_block,
  up_blocks.i, conv_norm_out}
  vae.* as the SD goldens
  cd.* as the SD goldens plus cd.input_ids_2, cd.time_ids [4,6], cd.text_embeds [4,24],
  cd.grad.token_embedding_2.row49408, cd.before/after.token_embedding_2.row49408,
  cd.after.token_embedding_2.row42170; K/V gradients and values are named by the UNet
  parameter (<layer>.to_k.weight), <layer> running over every transformer block
  (cd.kv_layers in the metadata); cd.step2.* the second step
  sampler.noise, sampler.{cond,uncond}{,_ids,_ids_2,_text_embeds}, sampler.time_ids,
  sampler.<s>.{timesteps,sigmas,init_noise_sigma,guided_model_output,latents,final} for
  s = euler (SDXL's default), ddim, dpmpp2m; sampler.euler_mc.* the Euler run with
  micro-conditioning original (96, 80), crop (8, 4), target (64, 64) (time_ids order
  h, w, top, left, h, w)
"""
import copy
import hashlib
import importlib.util
import itertools
import json
import math
import os
import shutil
import sys
import time
import traceback

T0 = time.time()
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.environ.get("OUT") or "/tmp/golden_sdxl_out"
TOKDIR = os.environ.get("TOKDIR") or os.path.join(HERE, "..", "..", "..", "shared", "golden")
DIFFUSERS_SRC = os.environ.get("DIFFUSERS_SRC")
if DIFFUSERS_SRC:
    sys.path.insert(0, DIFFUSERS_SRC)
os.makedirs(OUT, exist_ok=True)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(8)
REPORT = {"sections": {}, "checks": {}, "versions": {}, "digests": {}}


def log(*a):
    print(f"[{time.time() - T0:7.1f}s]", *a, flush=True)


def save_report():
    with open(os.path.join(OUT, "generation_report_sdxl.json"), "w") as f:
        json.dump(REPORT, f, indent=1, default=str)


def run_section(name, fn, *args):
    t = time.time()
    try:
        fn(*args)
        REPORT["sections"][name] = {"ok": True, "s": round(time.time() - t, 2)}
        log(f"SECTION {name}: OK ({time.time() - t:.1f}s)")
    except Exception as e:  # keep going
        REPORT["sections"][name] = {"ok": False, "error": repr(e), "trace": traceback.format_exc()[-3000:]}
        log(f"SECTION {name}: FAILED {e!r}")
        traceback.print_exc()
    save_report()


import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,  # noqa: E402
                       EulerDiscreteScheduler, UNet2DConditionModel)
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: E402

REPORT["versions"] = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
                      "diffusers": diffusers.__version__, "transformers": transformers.__version__}
log("versions", REPORT["versions"])

NAME = "tiny-sdxl"
D1, D2, PROJ, ADD_T = 16, 24, 24, 8
SPEC = dict(
    unet=dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64, 64),
              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
              transformer_layers_per_block=(1, 1, 2), attention_head_dim=(2, 4, 4),
              cross_attention_dim=D1 + D2, use_linear_projection=True, upcast_attention=False,
              norm_num_groups=8, addition_embed_type="text_time", addition_time_embed_dim=ADD_T,
              projection_class_embeddings_input_dim=PROJ + 6 * ADD_T),
    vae=dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
             up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(16, 32, 32, 32), layers_per_block=2,
             latent_channels=4, norm_num_groups=8, sample_size=64, scaling_factor=0.13025),
    text=dict(vocab_size=49408, hidden_size=D1, intermediate_size=2 * D1, num_hidden_layers=3,
              num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
              projection_dim=D1, bos_token_id=0, eos_token_id=2, pad_token_id=1),
    text_2=dict(vocab_size=49408, hidden_size=D2, intermediate_size=2 * D2, num_hidden_layers=3,
                num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5,
                projection_dim=PROJ, bos_token_id=0, eos_token_id=2, pad_token_id=1),
    seeds=(4001, 4002, 4003, 4004),
)
SCHED = {  # SDXL base 1.0's scheduler/scheduler_config.json
    "_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.19.0.dev0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False, "interpolation_type": "linear",
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None,
    "use_karras_sigmas": False}

TEXT_PROMPTS = ["a photo of an astronaut riding a horse on mars", "A  DOG,running!! 123", ""]
CD_PROMPTS = ["photo of a <new1> cat", "a <new1> cat sitting on a chair", "photo of a cat", "a cat sitting on a chair"]
SAMPLER_COND = "photo of a cat"
NEW_ID, INIT_ID = 49408, 42170
GS = 6.0


def reinit_(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.ndim == 1:
                v = (1.0 + 0.1 * torch.randn(p.shape, generator=g)) if name.endswith("weight") else \
                    0.1 * torch.randn(p.shape, generator=g)
            else:
                v = torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel())
            p.copy_(v.to(p.dtype))


def wjson(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


class Golden:
    def __init__(self, path):
        self.path, self.t, self.meta = path, {}, {"model": NAME}

    def put(self, k, v):
        if not torch.is_tensor(v):
            v = torch.tensor(v)
        v = v.detach()
        v = v.to(torch.int64) if v.dtype in (torch.int64, torch.int32) else v.to(torch.float32)
        self.t[k] = v.reshape(1) if v.ndim == 0 else v.contiguous().clone()

    def save(self):
        save_file(self.t, self.path, metadata=self.meta)


def tok_save(tdir, pad):
    os.makedirs(tdir, exist_ok=True)
    for fn in ("vocab.json", "merges.txt"):
        shutil.copyfile(os.path.join(TOKDIR, fn), os.path.join(tdir, fn))
    cfg = {"add_prefix_space": False, "bos_token": "<|startoftext|>", "do_lower_case": True,
           "eos_token": "<|endoftext|>", "errors": "replace", "model_max_length": 77, "pad_token": pad,
           "tokenizer_class": "CLIPTokenizer", "unk_token": "<|endoftext|>"}
    wjson(cfg, os.path.join(tdir, "tokenizer_config.json"))
    wjson({k: cfg[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")},
          os.path.join(tdir, "special_tokens_map.json"))


def prefix_text_model(path):
    """The customary key names (text_model.*; text_projection.weight stays top-level):
    transformers >= 5 saves without the text_model. prefix."""
    sd = load_file(path)
    if all(k.startswith("text_model.") or k.startswith("text_projection.") for k in sd):
        return
    sd = {(k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k): v.contiguous()
          for k, v in sd.items()}
    save_file(sd, path, metadata={"format": "pt"})


# ----------------------------------------------------------------------------------------------
def sec_build(M):
    mdir = os.path.join(OUT, NAME)
    shutil.rmtree(mdir, ignore_errors=True)
    os.makedirs(mdir)
    su, sv, st1, st2 = SPEC["seeds"]
    unet = UNet2DConditionModel(**SPEC["unet"])
    reinit_(unet, su)
    vae = AutoencoderKL(**SPEC["vae"])
    reinit_(vae, sv)
    te1 = CLIPTextModel(CLIPTextConfig(**SPEC["text"]))
    reinit_(te1, st1)
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**SPEC["text_2"]))
    reinit_(te2, st2)
    unet.save_pretrained(os.path.join(mdir, "unet"))
    vae.save_pretrained(os.path.join(mdir, "vae"))
    te1.save_pretrained(os.path.join(mdir, "text_encoder"))
    te2.save_pretrained(os.path.join(mdir, "text_encoder_2"))
    prefix_text_model(os.path.join(mdir, "text_encoder", "model.safetensors"))
    prefix_text_model(os.path.join(mdir, "text_encoder_2", "model.safetensors"))
    os.makedirs(os.path.join(mdir, "scheduler"))
    wjson(SCHED, os.path.join(mdir, "scheduler", "scheduler_config.json"))
    tok_save(os.path.join(mdir, "tokenizer"), "<|endoftext|>")
    tok_save(os.path.join(mdir, "tokenizer_2"), "!")
    wjson({"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": diffusers.__version__,
           "force_zeros_for_empty_prompt": True, "scheduler": ["diffusers", "EulerDiscreteScheduler"],
           "text_encoder": ["transformers", "CLIPTextModel"],
           "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
           "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
           "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]},
          os.path.join(mdir, "model_index.json"))
    M["dir"] = mdir
    # goldens come from the weights as saved, widened to float64
    M["unet"] = UNet2DConditionModel.from_pretrained(mdir, subfolder="unet").double().eval()
    M["vae"] = AutoencoderKL.from_pretrained(mdir, subfolder="vae").double().eval()
    M["te1"] = CLIPTextModel.from_pretrained(mdir, subfolder="text_encoder").double().eval()
    M["te2"] = CLIPTextModelWithProjection.from_pretrained(mdir, subfolder="text_encoder_2").double().eval()
    M["tok1"] = CLIPTokenizer.from_pretrained(mdir, subfolder="tokenizer")
    M["tok2"] = CLIPTokenizer.from_pretrained(mdir, subfolder="tokenizer_2")
    for nm, a, b in (("unet", unet, M["unet"]), ("text_encoder_2", te2, M["te2"])):
        sa, sb = a.state_dict(), b.state_dict()
        bad = [k for k in sa if k not in sb or not torch.equal(sa[k].double(), sb[k])]
        REPORT["checks"][f"reload.{nm}"] = {"n_params": sum(p.numel() for p in a.parameters()), "mismatched": bad[:10]}
    REPORT["checks"]["pad_ids"] = [M["tok1"].pad_token_id, M["tok2"].pad_token_id]
    log("params", {k: v["n_params"] for k, v in REPORT["checks"].items() if k.startswith("reload.")})


def ids(tok, texts):
    return tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def encode(M, ids1, ids2):
    """diffusers' SDXL encode_prompt: hidden_states[-2] of both, concatenated; pooled from the second."""
    o1 = M["te1"](ids1, output_hidden_states=True)
    o2 = M["te2"](ids2, output_hidden_states=True)
    return torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], dim=-1), o2.text_embeds, o1, o2


def sec_text(M, G):
    i1, i2 = ids(M["tok1"], TEXT_PROMPTS), ids(M["tok2"], TEXT_PROMPTS)
    with torch.no_grad():
        pe, pooled, o1, o2 = encode(M, i1, i2)
    G.put("text.input_ids", i1)
    G.put("text.input_ids_2", i2)
    G.put("text.hidden_states", torch.stack(list(o1.hidden_states)))
    G.put("text.hidden_states_2", torch.stack(list(o2.hidden_states)))
    G.put("text.text_embeds", pooled)
    G.put("text.prompt_embeds", pe)
    G.meta["text.prompts"] = json.dumps(TEXT_PROMPTS)
    # cross-check against the pipeline's own encode_prompt
    from diffusers import StableDiffusionXLPipeline
    pipe = StableDiffusionXLPipeline.from_pretrained(M["dir"], add_watermarker=False).to(torch.float64)
    with torch.no_grad():
        pe2, _, pool2, _ = pipe.encode_prompt(TEXT_PROMPTS, device="cpu", num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
    REPORT["checks"]["encode_prompt_rel"] = [((pe2 - pe).norm() / pe.norm()).item(),
                                             ((pool2 - pooled).norm() / pooled.norm()).item()]
    G.save()


def unet_hooks(unet, cap):
    def mk(name):
        def hook(mod, inp, out):
            cap[name] = (out[0] if isinstance(out, tuple) else out).detach().clone()
        return hook
    mods = [("time_proj", unet.time_proj), ("time_embedding", unet.time_embedding),
            ("add_time_proj", unet.add_time_proj), ("add_embedding", unet.add_embedding), ("conv_in", unet.conv_in),
            ("mid_block", unet.mid_block), ("conv_norm_out", unet.conv_norm_out)]
    mods += [(f"down_blocks.{i}", b) for i, b in enumerate(unet.down_blocks)]
    mods += [(f"up_blocks.{i}", b) for i, b in enumerate(unet.up_blocks)]
    return [m.register_forward_hook(mk(n)) for n, m in mods]


def sec_unet(M, G):
    unet = M["unet"]
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 4, 8, 8, generator=g)
    ehs = torch.randn(2, 77, D1 + D2, generator=g)
    te = torch.randn(2, PROJ, generator=g)
    tid = torch.tensor([[64., 64., 0., 0., 64., 64.], [96., 80., 8., 4., 64., 64.]])
    t = torch.tensor([999, 421], dtype=torch.long)
    cap = {}
    hooks = unet_hooks(unet, cap)
    try:
        with torch.no_grad():
            out = unet(x.double(), t, encoder_hidden_states=ehs.double(),
                       added_cond_kwargs={"text_embeds": te.double(), "time_ids": tid.double()}).sample
    finally:
        for h in hooks:
            h.remove()
    for k, v in (("sample", x), ("timesteps", t), ("encoder_hidden_states", ehs), ("text_embeds", te),
                 ("time_ids", tid), ("out", out)):
        G.put(f"unet.{k}", v)
    for k, v in cap.items():
        G.put(f"unet.dbg.{k}", v)
    G.save()


def sec_vae(M, G):
    vae = M["vae"]
    g = torch.Generator().manual_seed(12)
    img = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    z = torch.randn(1, 4, 8, 8, generator=g)
    with torch.no_grad():
        h = vae.encoder(img.double())
        post = vae.encode(img.double()).latent_dist
        dec = vae.decode(z.double()).sample
    for k, v in (("image", img), ("enc.h", h), ("enc.moments", vae.quant_conv(h)), ("enc.mean", post.mean),
                 ("enc.logvar", post.logvar), ("enc.std", post.std), ("dec.z", z),
                 ("dec.post_quant_conv", vae.post_quant_conv(z.double())), ("dec.out", dec)):
        G.put(f"vae.{k}", v)
    G.save()


class KVDetachProcessor:
    """The custom-diffusion repository's attention processor for training (written from its
    description): cross-attention detaches the key and value rows of token position 0."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
        q = attn.to_q(hidden_states)
        cross = encoder_hidden_states is not None
        ctx = encoder_hidden_states if cross else hidden_states
        k, v = attn.to_k(ctx), attn.to_v(ctx)
        if cross:
            keep = torch.ones_like(k)
            keep[:, :1, :] = 0
            k = keep * k + (1 - keep) * k.detach()
            v = keep * v + (1 - keep) * v.detach()
        q, k, v = attn.head_to_batch_dim(q), attn.head_to_batch_dim(k), attn.head_to_batch_dim(v)
        p = attn.get_attention_scores(q, k, None)
        h = attn.batch_to_head_dim(torch.bmm(p, v))
        return attn.to_out[1](attn.to_out[0](h))


def make_cd_batch():
    g = torch.Generator().manual_seed(13)
    pix, mask = torch.zeros(4, 3, 64, 64), torch.zeros(4, 1, 8, 8)
    for i, (scale, top, left) in enumerate([(40, 8, 16), (48, 0, 8)]):
        pix[i, :, top:top + scale, left:left + scale] = torch.rand(3, scale, scale, generator=g) * 2 - 1
        mask[i, 0, top // 8 + 1:(top + scale) // 8 - 1, left // 8 + 1:(left + scale) // 8 - 1] = 1.0
    pix[2:] = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    mask[2:] = 1.0
    noise = torch.randn(4, 4, 8, 8, generator=g)
    return pix, mask, noise, torch.tensor([17, 423, 680, 951], dtype=torch.long)


def grow(te):
    te.resize_token_embeddings(NEW_ID + 1)
    emb = te.get_input_embeddings().weight
    with torch.no_grad():
        emb.data[NEW_ID] = emb.data[INIT_ID]
    return emb


def sec_cd(M, G):
    """Two steps of the custom-diffusion repository's diffusers_training_sdxl.py with
    --freeze_model crossattn_kv --with_prior_preservation --modifier_token <new1>
    --initializer_token ktn, lr 1e-3 constant, AdamW (0.9, 0.999, 1e-2, 1e-8), max_grad_norm 1,
    posterior mean for latents, fixed noise/timesteps, float64. time_ids per sample (the
    script repeats one; cdiff follows each image's crop): cd.time_ids."""
    sched = DDPMScheduler.from_pretrained(M["dir"], subfolder="scheduler")
    unet, vae = copy.deepcopy(M["unet"]), M["vae"]
    te1, te2 = copy.deepcopy(M["te1"]), copy.deepcopy(M["te2"])
    tok1, tok2 = copy.deepcopy(M["tok1"]), copy.deepcopy(M["tok2"])
    for tk in (tok1, tok2):
        tk.add_tokens("<new1>")
        assert tk.convert_tokens_to_ids("<new1>") == NEW_ID
    e1, e2 = grow(te1), grow(te2)
    for te in (te1, te2):
        te.requires_grad_(False)
        te.get_input_embeddings().weight.requires_grad_(True)
    vae.requires_grad_(False)
    kv_params, kv_layers = [], []
    for name, p in unet.named_parameters():
        p.requires_grad = "attn2.to_k" in name or "attn2.to_v" in name
        if p.requires_grad:
            kv_params.append((name, p))
    kv_layers = sorted({n.rsplit(".to_", 1)[0] for n, _ in kv_params},
                       key=lambda s: [n for n, _ in kv_params].index(s + ".to_k.weight"))
    unet.set_attn_processor(KVDetachProcessor())
    opt = torch.optim.AdamW(itertools.chain([e1, e2], [p for _, p in kv_params]), lr=1e-3, betas=(0.9, 0.999),
                            weight_decay=1e-2, eps=1e-8)
    unet.train(), te1.train(), te2.train()
    pix, mask, noise, ts = make_cd_batch()
    i1, i2 = ids(tok1, CD_PROMPTS), ids(tok2, CD_PROMPTS)
    tid = torch.tensor([[64., 64., 0., 0., 64., 64.], [80., 80., 8., 16., 64., 64.],
                        [64., 64., 0., 0., 64., 64.], [64., 64., 0., 0., 64., 64.]], dtype=torch.float64)
    for k, v in (("pixel_values", pix), ("mask", mask), ("noise", noise), ("timesteps", ts), ("input_ids", i1),
                 ("input_ids_2", i2), ("time_ids", tid), ("before.token_embedding.row49408", e1.data[NEW_ID]),
                 ("before.token_embedding_2.row49408", e2.data[NEW_ID])):
        G.put(f"cd.{k}", v)
    G.meta["cd.prompts"] = json.dumps(CD_PROMPTS)
    G.meta["cd.kv_layers"] = json.dumps(kv_layers)
    params = dict(kv_params)

    def step(prefix, first):
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            lat = vae.encode(pix.double()).latent_dist.mean * vae.config.scaling_factor
        noisy = sched.add_noise(lat, noise.double(), ts)
        pe, pooled, _, _ = encode({"te1": te1, "te2": te2}, i1, i2)
        pred = unet(noisy, ts, pe, added_cond_kwargs={"text_embeds": pooled, "time_ids": tid}).sample
        target = noise.double()
        pi, pp = pred.chunk(2)
        ti, tp = target.chunk(2)
        m = mask.double().chunk(2)[0]
        li = ((F.mse_loss(pi, ti, reduction="none") * m).sum([1, 2, 3]) / m.sum([1, 2, 3])).mean()
        lp = F.mse_loss(pp, tp, reduction="mean")
        loss = li + lp
        loss.backward()
        for e in (e1, e2):
            keep = torch.arange(NEW_ID + 1) == NEW_ID
            e.grad.data[~keep] = 0
        if first:
            for k, v in (("latents", lat), ("noisy_latents", noisy), ("target", target),
                         ("encoder_hidden_states", pe), ("text_embeds", pooled), ("model_pred", pred)):
                G.put(f"cd.{k}", v)
        for k, v in (("loss_instance", li), ("loss_prior", lp), ("loss", loss),
                     ("grad.token_embedding.row49408", e1.grad[NEW_ID]),
                     ("grad.token_embedding_2.row49408", e2.grad[NEW_ID])):
            G.put(prefix + k, v)
        for n, p in kv_params:
            G.put(f"{prefix}grad.{n}", p.grad)
        clip = itertools.chain([p for n, p in unet.named_parameters() if "attn2" in n], te1.parameters(),
                               te2.parameters())
        total = torch.nn.utils.clip_grad_norm_(clip, 1.0)
        G.put(prefix + "grad_norm_total", total)
        G.put(prefix + "clip_coef", torch.clamp(1.0 / (total + 1e-6), max=1.0))
        opt.step()
        for k, v in (("after.token_embedding.row49408", e1.data[NEW_ID]),
                     ("after.token_embedding_2.row49408", e2.data[NEW_ID]),
                     ("after.token_embedding.row42170", e1.data[INIT_ID]),
                     ("after.token_embedding_2.row42170", e2.data[INIT_ID])):
            G.put(prefix + k, v)
        for n, p in kv_params:
            G.put(f"{prefix}after.{n}", p.data)
        log(f"{prefix} loss={loss.item():.6f} inst={li.item():.6f} prior={lp.item():.6f} gnorm={float(total):.4f}")

    step("cd.", True)
    step("cd.step2.", False)
    M["cd_after"] = {n: p.detach().clone() for n, p in params.items()}
    M["cd_rows"] = (e1.data[NEW_ID].clone(), e2.data[NEW_ID].clone())
    G.save()


def sec_samplers(M, G):
    """diffusers' StableDiffusionXLPipeline loop with force_zeros_for_empty_prompt: the empty
    negative prompt gives zero context and zero pooled embeddings; guidance 6, 10 steps, 64 px."""
    unet = M["unet"]
    ci1, ci2 = ids(M["tok1"], [SAMPLER_COND]), ids(M["tok2"], [SAMPLER_COND])
    with torch.no_grad():
        pe, pooled, _, _ = encode(M, ci1, ci2)
    ue, upooled = torch.zeros_like(pe), torch.zeros_like(pooled)
    g = torch.Generator().manual_seed(14)
    noise = torch.randn(1, 4, 8, 8, generator=g)
    for k, v in (("noise", noise), ("cond_ids", ci1), ("cond_ids_2", ci2), ("cond", pe), ("cond_text_embeds", pooled),
                 ("uncond", ue), ("uncond_text_embeds", upooled)):
        G.put(f"sampler.{k}", v)
    M["sampler_noise"] = noise
    runs = [("euler", EulerDiscreteScheduler, (64, 64, 0, 0, 64, 64)), ("ddim", DDIMScheduler, (64, 64, 0, 0, 64, 64)),
            ("dpmpp2m", DPMSolverMultistepScheduler, (64, 64, 0, 0, 64, 64)),
            ("euler_mc", EulerDiscreteScheduler, (96, 80, 8, 4, 64, 64))]
    M["final"] = {}
    for sname, cls, tv in runs:
        s = cls.from_pretrained(M["dir"], subfolder="scheduler")
        s.set_timesteps(10)
        tid = torch.tensor([tv, tv], dtype=torch.float64)
        G.put(f"sampler.{sname}.time_ids", tid[:1])
        lat = noise.double() * s.init_noise_sigma
        lats, preds = [], []
        ctx, te = torch.cat([ue, pe]), torch.cat([upooled, pooled])
        with torch.no_grad():
            for t in s.timesteps:
                x = s.scale_model_input(torch.cat([lat] * 2), t)
                o = unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs={"text_embeds": te, "time_ids": tid}).sample
                u, c = o.chunk(2)
                guided = u + GS * (c - u)
                lat = s.step(guided, t, lat).prev_sample
                lats.append(lat)
                preds.append(guided)
        G.put(f"sampler.{sname}.timesteps", s.timesteps.to(torch.float64))
        if torch.is_tensor(getattr(s, "sigmas", None)):
            G.put(f"sampler.{sname}.sigmas", s.sigmas)
        G.put(f"sampler.{sname}.init_noise_sigma", torch.tensor(float(s.init_noise_sigma)))
        G.put(f"sampler.{sname}.latents", torch.stack(lats))
        G.put(f"sampler.{sname}.guided_model_output", torch.stack(preds))
        G.put(f"sampler.{sname}.final", lat)
        G.meta[f"sampler.{sname}.config"] = json.dumps(dict(s.config), default=str)
        M["final"][sname] = lat
        log(f"sampler {sname}: timesteps {s.timesteps.tolist()}")
    G.meta["sampler.guidance_scale"] = str(GS)
    G.meta["sampler.prompts"] = json.dumps([SAMPLER_COND, ""])
    G.save()


def sec_pipeline_check(M):
    """StableDiffusionXLPipeline from the folder (its tokenizers and encoders on the prompt
    strings, the empty negative prompt zeroed) must reproduce the manual Euler loops."""
    from diffusers import StableDiffusionXLPipeline
    pipe = StableDiffusionXLPipeline.from_pretrained(M["dir"], add_watermarker=False).to(torch.float64)
    pipe.set_progress_bar_config(disable=True)
    for sname, kw in (("euler", {}), ("euler_mc", dict(original_size=(96, 80), crops_coords_top_left=(8, 4),
                                                        target_size=(64, 64)))):
        out = pipe(prompt=SAMPLER_COND, num_inference_steps=10, guidance_scale=GS, height=64, width=64,
                   latents=M["sampler_noise"].double(), output_type="latent",  # prepare_latents scales it
                   **kw).images
        ref = M["final"][sname]
        REPORT["checks"][f"pipeline_vs_manual_{sname}_rel"] = ((out - ref).norm() / ref.norm()).item()


def features(M, tok1, tok2, te1, te2, prompts):
    """cdiff merge's feature rows (docs/merge.md): per prompt the context rows 1..EOS (no SOS,
    no padding), without the "photo of a" rows when the prompt starts so; the context is the
    concatenated penultimate states of both encoders (SDXL's K/V input)."""
    rows = []
    for p in prompts:
        a = tok1(p, truncation=True, max_length=77).input_ids
        i1 = ids(tok1, [p])
        i2 = ids(tok2, [p])
        with torch.no_grad():
            pe, _, _, _ = encode({"te1": te1, "te2": te2}, i1, i2)
        start = 4 if tok1.convert_ids_to_tokens(a[1:4]) == ["photo</w>", "of</w>", "a</w>"] else 1
        rows.append(pe[0, start:len(a)])
    return torch.cat(rows).numpy().astype(np.float64)


def sec_merge(M):
    """composenW over both encoders' concatenated features (float64): two concepts, each a
    copy of the base K/V weights plus a seeded perturbation, with tokens <new1>/<new2> whose
    rows (one per encoder) are seeded too. Stores, per K/V layer, W0, W1, W2 and W_hat, the
    features C_reg, C1, C2 and the tokens' rows, so a test can check both the features and the
    solve."""
    rng = np.random.default_rng(20240612)
    tok1, tok2 = copy.deepcopy(M["tok1"]), copy.deepcopy(M["tok2"])
    te1, te2 = copy.deepcopy(M["te1"]), copy.deepcopy(M["te2"])
    for tk in (tok1, tok2):
        tk.add_tokens(["<new1>", "<new2>"])
    out = {}
    for te, d, key in ((te1, D1, "embeds"), (te2, D2, "embeds_2")):
        te.resize_token_embeddings(NEW_ID + 2)
        rowsv = rng.standard_normal((2, d)) / math.sqrt(d)
        with torch.no_grad():
            te.get_input_embeddings().weight[NEW_ID:NEW_ID + 2] = torch.from_numpy(rowsv)
        out[key] = rowsv
    reg = ["a dog on the grass", "a red car parked on the street", "photo of a mountain lake", "a bowl of fruit",
           "an old man reading a book", "a city skyline at night", "a cat", "two birds on a wire"]
    cats = ["cat", "chair"]
    Creg = features(M, tok1, tok2, te1, te2, reg)
    Cs = [features(M, tok1, tok2, te1, te2, [f"<new{i + 1}> {c}", f"photo of a <new{i + 1}> {c}"])
          for i, c in enumerate(cats)]
    C = np.concatenate(Cs)
    Mreg = Creg.T @ Creg
    MinvCt = np.linalg.solve(Mreg, C.T)
    sd = {k: v.numpy() for k, v in M["unet"].state_dict().items() if "attn2.to_k" in k or "attn2.to_v" in k}
    for n, W0 in sorted(sd.items()):
        Ws = [W0 + 0.1 * rng.standard_normal(W0.shape) / math.sqrt(W0.shape[1]) for _ in cats]
        V = np.concatenate([(W @ Ci.T).T for W, Ci in zip(Ws, Cs)])
        R = V.T - W0 @ C.T
        What = W0 + np.linalg.solve((C @ MinvCt).T, R.T).T @ MinvCt.T
        res = np.abs(What @ C.T - V.T).max()
        REPORT["checks"].setdefault("merge_residual_max", 0.0)
        REPORT["checks"]["merge_residual_max"] = max(REPORT["checks"]["merge_residual_max"], float(res))
        out[f"{n}.W0"], out[f"{n}.W1"], out[f"{n}.W2"], out[f"{n}.W_hat"] = W0, Ws[0], Ws[1], What
    out["C_reg"], out["C1"], out["C2"] = Creg, Cs[0], Cs[1]
    save_file({k: torch.from_numpy(np.ascontiguousarray(v)).to(torch.float64) for k, v in out.items()},
              os.path.join(OUT, "merge_tiny-sdxl.safetensors"),
              metadata={"reg_prompts": json.dumps(reg), "categories": json.dumps(cats),
                        "formula": "W_hat = W0 + (V^T - W0 C^T) (C M^-1 C^T)^-1 C M^-1, M = C_reg^T C_reg"})


def sec_single_file(M):
    conv_path = os.path.join(DIFFUSERS_SRC or "", "..", "scripts", "convert_diffusers_to_original_sdxl.py")
    if not os.path.exists(conv_path):
        raise FileNotFoundError(conv_path)
    spec = importlib.util.spec_from_file_location("convxl", conv_path)
    conv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conv)
    mdir = M["dir"]
    u = load_file(os.path.join(mdir, "unet", "diffusion_pytorch_model.safetensors"))
    v = load_file(os.path.join(mdir, "vae", "diffusion_pytorch_model.safetensors"))
    t1 = load_file(os.path.join(mdir, "text_encoder", "model.safetensors"))
    t2 = load_file(os.path.join(mdir, "text_encoder_2", "model.safetensors"))
    sd = {"model.diffusion_model." + k: x for k, x in conv.convert_unet_state_dict(u).items()}
    sd.update({"first_stage_model." + k: x for k, x in conv.convert_vae_state_dict(v).items()})
    sd.update({"conditioner.embedders.0.transformer." + k: x for k, x in t1.items()})
    oc = conv.convert_openclip_text_enc_state_dict(t2)
    # OpenCLIP applies text_projection as x @ P: the Linear weight transposed (as the script's main does)
    oc["text_projection"] = oc.pop("text_projection.weight").T.contiguous()
    sd.update({"conditioner.embedders.1.model." + k: x for k, x in oc.items()})
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].float().contiguous().numpy().tobytes())
    REPORT["digests"]["single_file"] = {"sha256": h.hexdigest(), "n_keys": len(sd)}
    save_file({k: x.contiguous() for k, x in sd.items()}, os.path.join(OUT, f"{NAME}_original.safetensors"))


def main():
    M = {}
    G = Golden(os.path.join(OUT, f"golden_{NAME}.safetensors"))
    G.meta.update({"torch": torch.__version__, "diffusers": diffusers.__version__,
                   "transformers": transformers.__version__, "compute_dtype": "float64"})
    run_section("build", sec_build, M)
    if "unet" not in M:
        return
    run_section("text", sec_text, M, G)
    run_section("unet", sec_unet, M, G)
    run_section("vae", sec_vae, M, G)
    run_section("cd", sec_cd, M, G)
    run_section("samplers", sec_samplers, M, G)
    run_section("pipeline_check", sec_pipeline_check, M)
    run_section("merge", sec_merge, M)
    run_section("single_file", sec_single_file, M)
    # the tokenizer vocabulary is not shipped: tests copy it in from ../shared/golden
    for sub in ("tokenizer", "tokenizer_2"):
        for fn in ("vocab.json", "merges.txt"):
            p = os.path.join(M["dir"], sub, fn)
            if os.path.exists(p):
                os.remove(p)
    save_report()
    log("SUMMARY", json.dumps({k: v["ok"] for k, v in REPORT["sections"].items()}))
    for root, _, files in os.walk(OUT):
        for f in sorted(files):
            log("OUT", os.path.relpath(os.path.join(root, f), OUT), os.path.getsize(os.path.join(root, f)))


if __name__ == "__main__":
    main()
