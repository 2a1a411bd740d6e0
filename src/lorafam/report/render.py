"""A tiny document model (headings, paragraphs, tables, figures, code) and its two renderers.

Markdown references figures as PNG files next to it; HTML is one self-contained page: inline ``style``
attributes only (editors such as WeChat's drop ``<style>`` blocks) and figures as base64 ``data:`` URIs.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field


@dataclass
class Block:
    kind: str  # "h1" | "h2" | "h3" | "p" | "table" | "figure" | "code" | "list"
    text: str = ""
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    png: bytes | None = None
    name: str = ""  # figure file stem


def to_markdown(blocks: list[Block], figure_dir: str = "figures") -> str:
    out: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append("#" * int(b.kind[1]) + " " + b.text)
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "list":
            out.append("\n".join(f"- {i}" for i in b.items))
        elif b.kind == "code":
            out.append(f"```\n{b.text}\n```")
        elif b.kind == "table":
            cells = [[c.replace("|", "\\|").replace("\n", " ") for c in row] for row in b.rows]
            lines = ["| " + " | ".join(b.headers) + " |", "|" + "---|" * len(b.headers)]
            lines += ["| " + " | ".join(row) + " |" for row in cells]
            out.append("\n".join(lines))
        elif b.kind == "figure":
            out.append(f"![{b.text}]({figure_dir}/{b.name}.png)\n\n*{b.text}*")
    return "\n\n".join(out) + "\n"


_S = {
    "body": "max-width:860px;margin:0 auto;padding:24px 16px;font-family:-apple-system,'PingFang SC','Hiragino Sans "
    "GB','Microsoft YaHei','Noto Sans CJK SC',Helvetica,Arial,sans-serif;font-size:15px;line-height:1.7;"
    "color:#1f2328;background:#ffffff",
    "h1": "font-size:26px;line-height:1.3;margin:8px 0 16px;color:#0b3d91",
    "h2": "font-size:20px;margin:28px 0 10px;padding-bottom:4px;border-bottom:2px solid #d0d7de;color:#0b3d91",
    "h3": "font-size:17px;margin:20px 0 8px;color:#24292f",
    "p": "margin:8px 0",
    "table": "border-collapse:collapse;width:100%;font-size:12.5px;margin:10px 0;display:block;overflow-x:auto",
    "th": "border:1px solid #d0d7de;background:#f0f4fa;padding:4px 6px;text-align:left",
    "td": "border:1px solid #d0d7de;padding:4px 6px;vertical-align:top",
    "img": "max-width:100%;height:auto;display:block;margin:8px auto;border:1px solid #eaeef2",
    "cap": "font-size:12.5px;color:#57606a;text-align:center;margin:2px 0 14px",
    "code": "background:#f6f8fa;border:1px solid #d0d7de;border-radius:4px;padding:8px;font-size:12.5px;"
    "white-space:pre-wrap;word-break:break-all;font-family:Menlo,Consolas,monospace",
    "icode": "background:#f0f2f4;border-radius:3px;padding:0 3px;font-family:Menlo,Consolas,monospace;"
    "font-size:13px",
}
VERDICT_COLOURS = {
    "supported": "#1a7f37",
    "contradicted": "#cf222e",
    "mixed": "#9a6700",
    "not measurable here": "#57606a",
    "成立": "#1a7f37",
    "不成立": "#cf222e",
    "部分成立": "#9a6700",
    "此处无法测量": "#57606a",
}


def _inline(text: str) -> str:
    t = html.escape(text, quote=False)
    t = re.sub(r"`([^`]+)`", lambda m: f'<code style="{_S["icode"]}">{m.group(1)}</code>', t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)
    t = re.sub(r"(?<![*\w])\*([^*\n]+)\*(?![*\w])", r"<em>\1</em>", t)
    return t


def _cell(text: str) -> str:
    colour = VERDICT_COLOURS.get(text)
    if colour:
        return f'<span style="color:{colour};font-weight:600">{html.escape(text)}</span>'
    return _inline(text)


def to_html(blocks: list[Block], title: str, lang: str) -> str:
    parts = [
        f'<!DOCTYPE html>\n<html lang="{lang}">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{html.escape(title)}</title>'
        f'\n</head>\n<body style="margin:0;background:#ffffff">\n<section style="{_S["body"]}">'
    ]
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            parts.append(f'<{b.kind} style="{_S[b.kind]}">{_inline(b.text)}</{b.kind}>')
        elif b.kind == "p":
            parts.append(f'<p style="{_S["p"]}">{_inline(b.text)}</p>')
        elif b.kind == "list":
            items = "".join(f'<li style="margin:3px 0">{_inline(i)}</li>' for i in b.items)
            parts.append(f'<ul style="margin:6px 0;padding-left:22px">{items}</ul>')
        elif b.kind == "code":
            parts.append(f'<pre style="{_S["code"]}">{html.escape(b.text)}</pre>')
        elif b.kind == "table":
            head = "".join(f'<th style="{_S["th"]}">{_inline(h)}</th>' for h in b.headers)
            body = "".join(
                "<tr>" + "".join(f'<td style="{_S["td"]}">{_cell(c)}</td>' for c in row) + "</tr>"
                for row in b.rows
            )
            parts.append(
                f'<table style="{_S["table"]}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
            )
        elif b.kind == "figure" and b.png:
            data = base64.b64encode(b.png).decode("ascii")
            parts.append(
                f'<figure style="margin:0"><img style="{_S["img"]}" alt="{html.escape(b.text)}" '
                f'src="data:image/png;base64,{data}"><figcaption style="{_S["cap"]}">{_inline(b.text)}'
                "</figcaption></figure>"
            )
    parts.append("</section>\n</body>\n</html>\n")
    return "\n".join(parts)
