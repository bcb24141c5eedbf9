"""GPU check: GPT-NeoX loss and input gradient with and without Liger's RoPE patch (same weights, same batch)."""
import torch
from transformers import GPTNeoXConfig, AutoModelForCausalLM
from peftpipe.engines.hf.modeling import prepare_model, loss_sum
from peftpipe.engines.hf.packing import collate
dev = torch.device("cuda")
results = []
for use_liger in (False, True):
    for pct in (1.0, 0.25):
        torch.manual_seed(0)
        cfg = GPTNeoXConfig(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024, vocab_size=512, rotary_pct=pct)
        base = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").to(dev, torch.bfloat16)
        p = prepare_model(base, {"method": "lora", "r": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": "auto"}, dev, False, use_liger=use_liger)
        for m in p.model.modules():
            if hasattr(m, "lora_B"):
                for b in m.lora_B.values(): torch.nn.init.normal_(b.weight, std=0.02)
        g = torch.Generator().manual_seed(1)
        ex = [{"input_ids": (ids := torch.randint(0, 512, (300,), generator=g).tolist()), "labels": ids} for _ in range(4)]
        for packed in (False, True):
            batch = collate(ex, [[0, 1], [2, 3]] if packed else [[0], [1], [2], [3]], 0, dev, packed=packed)
            with torch.autocast("cuda", torch.bfloat16):
                loss = loss_sum(p.model, batch, p.head_weight, use_liger)
            loss.backward()
            grad = sum(float(q.grad.float().norm()) for q in p.model.parameters() if q.grad is not None)
            p.model.zero_grad()
            print(f"liger={use_liger} rotary_pct={pct} packed={packed} loss={float(loss):.4f} grad_norm_sum={grad:.4f} features={p.features[0]}", flush=True)
