"""Images in chat requests, end to end: the official openai client, the gateway, Ray Serve
and vLLM's CPU build.

* OCR, on the packaged default deployment (``deploy/defaults/qwen-coder.yaml`` declares
  ``multimodal: {image: ocr}``): a picture of an invoice is answered from the text read in
  it, and the answer's trace says so.
* Native, on a tiny random vision-language model (Idefics3, built here by
  ``serving/tiny_vlm.py``) with a LoRA adapter: vLLM sees the pixels — the answer changes
  with the image and with the adapter, streamed and not. (Its weights are random, so what
  it says means nothing; a real VLM on the GPU profile answers the same requests.)
* Reject and the limits: a 400 naming the image part, before any model is asked.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import openai
import pytest
from _platform import Platform
from PIL import Image, ImageDraw, ImageFont

from qingliang.serving.tiny_vlm import build_tiny_idefics3, build_tiny_vlm_adapter

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def png_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def invoice() -> str:
    """A photographed-invoice stand-in: printed lines, a number the question asks for."""
    image = Image.new("RGB", (900, 330), "white")
    pen = ImageDraw.Draw(image)
    font = ImageFont.truetype(str(FONT), 40) if FONT.exists() else ImageFont.load_default(40)
    for row, text in enumerate(("INVOICE No. 4821", "Pump repair, 2 hours", "TOTAL: 365 CNY")):
        pen.text((40, 30 + 100 * row), text, fill="black", font=font)
    return png_url(image)


def plain(colour: str) -> str:
    return png_url(Image.new("RGB", (80, 60), colour))


def ask(url: str, question: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": question},
            ],
        }
    ]


# ------------------------------------------------------------------ OCR on the default


def test_the_default_deployment_reads_an_invoice(client: openai.OpenAI, qwen: str) -> None:
    question = "What is the total amount on this invoice? Answer with the number only."
    raw = client.chat.completions.with_raw_response.create(
        model=qwen, messages=ask(invoice(), question), max_tokens=16, temperature=0
    )
    answer = raw.parse()
    assert "365" in (answer.choices[0].message.content or "")
    assert raw.headers["x-qingliang-images"] == "ocr; count=1"
    trace = answer.model_extra["qingliang"]["images"]
    assert trace["mode"] == "ocr" and trace["count"] == 1 and trace["ocr_chars"] > 20


def test_the_default_deployment_reads_an_invoice_streamed(client: openai.OpenAI, qwen: str) -> None:
    question = "What is the invoice number? Answer with the number only."
    stream = client.chat.completions.create(
        model=qwen, messages=ask(invoice(), question), max_tokens=16, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks[0].model_extra["qingliang"]["images"]["mode"] == "ocr"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "4821" in text


def test_the_cli_sends_a_photo(platform: Platform, qwen: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from qingliang.platform.cli.main import app

    photo = tmp_path / "invoice.png"
    photo.write_bytes(base64.b64decode(invoice().split(",", 1)[1]))
    question = "What is the total amount on this invoice? Answer with the number only."
    args = ["chat", qwen, "-m", question, "--image", str(photo), "--url", platform.base_url]
    args += ["--api-key", platform.key, "--temperature", "0", "--max-tokens", "16"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "1 image(s) read by OCR" in r.output and "365" in r.output


# ------------------------------------------------------------------ native: a tiny VLM


@pytest.fixture(scope="module")
def vlm(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("vlm")
    base = build_tiny_idefics3(root / "base")
    build_tiny_vlm_adapter(base, root / "adapter-a")
    manifest = f"""apiVersion: qingliang.io/v1
kind: ModelDeployment
metadata: {{name: vlm}}
spec:
  model: {{source: {base}}}
  engine: {{kind: vllm, max_model_len: 512, max_num_seqs: 4, kv_cache_gib: 1, cpu_threads: 1,
            enforce_eager: true}}
  lora: {{enabled: true, max_rank: 8, adapters: {{a: {root / "adapter-a"}}}}}
  multimodal: {{image: {{max_per_prompt: 2}}}}
  placement: {{cpus: 0.5}}
"""
    platform.ctl.apply(
        [platform.manifest("vlm", manifest)], wait=True, timeout_s=900, progress=False
    )
    return "vlm"


def see(client: openai.OpenAI, model: str, url: str) -> str:
    answer = client.chat.completions.create(
        model=model, messages=ask(url, "what is it"), max_tokens=12, temperature=0
    )
    assert answer.model_extra["qingliang"]["images"] == {"mode": "native", "count": 1}
    return answer.choices[0].message.content or ""


def test_a_vision_model_sees_the_pixels(client: openai.OpenAI, vlm: str) -> None:
    red, blue = see(client, vlm, plain("red")), see(client, vlm, plain("blue"))
    assert red and blue and red != blue
    assert see(client, vlm, plain("red")) == red  # greedy: the same image, the same answer


def test_a_vision_model_with_a_lora_adapter(client: openai.OpenAI, vlm: str) -> None:
    base, adapted = see(client, vlm, plain("red")), see(client, f"{vlm}:a", plain("red"))
    assert base != adapted


def test_a_vision_model_streams(client: openai.OpenAI, vlm: str) -> None:
    stream = client.chat.completions.create(
        model=vlm,
        messages=ask(plain("blue"), "what is it"),
        max_tokens=12,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    assert chunks[0].model_extra["qingliang"]["images"]["mode"] == "native"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == see(client, vlm, plain("blue"))


def test_more_images_than_the_deployment_takes(client: openai.OpenAI, vlm: str) -> None:
    parts = [{"type": "image_url", "image_url": {"url": plain(c)}} for c in ("red", "blue", "red")]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=vlm, messages=[{"role": "user", "content": parts}], max_tokens=4
        )
    assert "3 images in one request" in str(err.value) and "at most 2" in str(err.value)


# ------------------------------------------------------------------ an agent graph, both paths

EYES = """apiVersion: qingliang.io/v1
kind: AgentGraph
metadata: {name: it-eyes}
spec:
  agents:
    - {name: reader, model: qwen-coder, images: ocr, max_tokens: 16,
       system: "Answer with the number only."}
    - {name: looker, model: vlm, images: native, max_tokens: 8}
  nodes:
    - {name: read, type: agent, agent: reader, next: look}
    - {name: look, type: agent, agent: looker}
"""


def test_an_agent_graph_reads_by_ocr_and_looks_natively(
    platform: Platform, http: httpx.Client, qwen: str, vlm: str
) -> None:
    platform.ctl.apply([platform.manifest("it-eyes", EYES)], wait=False, progress=False)
    data = invoice().split(",", 1)[1]
    body = {
        "input": "What is the total amount on this invoice?",
        "attachments": [{"name": "invoice.png", "data": data}],
    }
    with http.stream("POST", "/v1/agents/it-eyes/runs", json=body) as r:
        assert r.status_code == 200, r.read()
        events = [
            json.loads(line.removeprefix("data: "))
            for line in r.iter_lines()
            if line.startswith("data: ") and line != "data: [DONE]"
        ]
    assert events[-1]["type"] == "status" and events[-1]["status"] == "done", events[-1]
    said: dict[str, str] = {}
    for e in events:
        if e["type"] == "token":
            said[e["node"]] = said.get(e["node"], "") + e["delta"]
    assert "365" in said["read"]  # the text model read the invoice through OCR
    assert said["look"]  # the vision model was sent the image and answered
    run = http.get(f"/v1/agents/runs/{events[0]['run_id']}").json()
    assert run["input"]["attachments"] == ["invoice.png"]


# ------------------------------------------------------------------ reject and limits


def test_a_text_only_deployment_rejects_images_by_part(
    client: openai.OpenAI, platform: Platform
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="tiny", messages=ask(plain("red"), "what is it"), max_tokens=4
        )
    assert err.value.body["param"] == "messages[0].content[0]"
    assert "deployment 'tiny' does not take images" in err.value.body["message"]


def test_images_are_never_fetched_from_the_network(client: openai.OpenAI, qwen: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=qwen, messages=ask("http://127.0.0.1:9/x.png", "what is it"), max_tokens=4
        )
    assert "not fetched from the network" in err.value.body["message"]
