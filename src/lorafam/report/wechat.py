"""The article's renderers: WeChat-ready HTML (every style inline, the mdnice approach) and Markdown.

WeChat's editor strips ``<style>`` blocks, classes and scripts, and has no web fonts, so the page uses inline
``style`` attributes only, the reader's system fonts, no tables (the draft/measured boxes are sections), code as
wrapped plain text, and images either as numbered PNG files beside the page (upload them in that order) or, with
``inline_images``, as ``data:`` URIs. Nothing is wider than the screen: images scale to 100%, long words break.
"""

from __future__ import annotations

import base64
import html
import re

from lorafam.report.render import Block

FONT = "-apple-system,BlinkMacSystemFont,'PingFang SC','Hiragino Sans GB','Microsoft YaHei',sans-serif"
MONO = "Menlo,Consolas,'Courier New',monospace"
CITE_STYLE = "font-size:12px;color:#8c8c8c"  # the self-check finds citations by this style
CODE_STYLE = f"font-family:{MONO};font-size:13px;background:#f3f4f6;border-radius:3px;padding:0 3px"
S = {
    "root": f"max-width:677px;margin:0 auto;padding:16px;font-family:{FONT};font-size:16px;line-height:1.75;"
    "color:#222222;background:#ffffff;overflow-wrap:break-word;word-break:break-word",
    "h1": "font-size:22px;line-height:1.4;font-weight:bold;margin:8px 0 18px;color:#111111",
    "h2": "font-size:19px;line-height:1.4;font-weight:bold;margin:36px 0 14px;padding-left:10px;"
    "border-left:4px solid #0072B2;color:#111111",
    "h3": "font-size:17px;line-height:1.4;font-weight:bold;margin:26px 0 10px;color:#0072B2",
    "p": "margin:12px 0;text-align:left",
    "box": "margin:14px 0;padding:8px 12px;border:1px solid #e3e3e3;border-radius:6px;background:#fafafa",
    "box_p": "margin:6px 0;font-size:15px;line-height:1.7",
    "img": "display:block;width:100%;max-width:100%;height:auto;margin:0 auto",
    "cap": "margin:6px 0 18px;font-size:13px;line-height:1.5;color:#888888;text-align:center",
    "code": f"margin:12px 0;padding:10px 12px;background:#f6f8fa;border-radius:4px;font-family:{MONO};"
    "font-size:13px;line-height:1.6;white-space:pre-wrap;word-break:break-all;color:#24292f",
    "ul": "margin:10px 0;padding-left:20px",
    "li": "margin:4px 0",
}
BOX_COLOURS = ("#D55E00", "#0072B2", "#8c8c8c")  # the draft said / measured / source


def _inline(text: str, md: bool = False) -> str:
    if md:
        return re.sub(r"⟦([^⟧]*)⟧", r"<sub>\1</sub>", text)
    t = html.escape(text, quote=False)
    t = re.sub(r"⟦([^⟧]*)⟧", lambda m: f'<span style="{CITE_STYLE}">{m.group(1)}</span>', t)
    t = re.sub(r"`([^`]+)`", lambda m: f'<code style="{CODE_STYLE}">{m.group(1)}</code>', t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)
    return re.sub(r"(?<![*\w])\*([^*\n]+)\*(?![*\w])", r"<em>\1</em>", t)


def image_src(b: Block, folder: str, inline: bool) -> str:
    """The ``src`` of a figure: its numbered file beside the page, or a ``data:`` URI."""
    if inline and b.png:
        return "data:image/png;base64," + base64.b64encode(b.png).decode("ascii")
    return f"{folder}/{b.name}.png"


def to_wechat_html(blocks: list[Block], title: str, lang: str, folder: str, inline_images: bool = False) -> str:
    """One page, inline styles only; figures from ``folder`` (relative) or inlined."""
    out = [
        f'<!DOCTYPE html>\n<html lang="{lang}">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{html.escape(title)}</title>\n'
        f'</head>\n<body style="margin:0;background:#ffffff">\n<section style="{S["root"]}">'
    ]
    for b in blocks:
        out.append(_html_block(b, folder, inline_images))
    out.append("</section>\n</body>\n</html>\n")
    return "\n".join(x for x in out if x)


def _html_block(b: Block, folder: str, inline: bool) -> str:
    if b.kind in ("h1", "h2", "h3"):
        return f'<{b.kind} style="{S[b.kind]}">{_inline(b.text)}</{b.kind}>'
    if b.kind == "p":
        return f'<p style="{S["p"]}">{_inline(b.text)}</p>'
    if b.kind == "box":
        rows = "".join(
            f'<p style="{S["box_p"]}"><strong style="color:{BOX_COLOURS[min(i, 2)]}">{html.escape(label)}</strong>'
            f"　{_inline(text)}</p>"
            for i, (label, text) in enumerate(b.rows)
        )
        return f'<section style="{S["box"]}">{rows}</section>'
    if b.kind == "figure" and b.png:
        src = image_src(b, folder, inline)
        return (
            f'<p style="margin:18px 0 0"><img style="{S["img"]}" alt="{html.escape(b.text)}" src="{src}"></p>'
            f'<p style="{S["cap"]}">{_inline(b.text)}</p>'
        )
    if b.kind == "code":
        return f'<p style="{S["code"]}">{html.escape(b.text)}</p>'
    if b.kind == "list":
        items = "".join(f'<li style="{S["li"]}">{_inline(i)}</li>' for i in b.items)
        return f'<ul style="{S["ul"]}">{items}</ul>'
    return ""


def to_article_markdown(blocks: list[Block], folder: str) -> str:
    """The same article as Markdown, figures referenced as the numbered PNG files in ``folder``."""
    out: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append("#" * int(b.kind[1]) + " " + _inline(b.text, md=True))
        elif b.kind == "p":
            out.append(_inline(b.text, md=True))
        elif b.kind == "box":
            out.append("\n>\n".join(f"> **{label}** {_inline(text, md=True)}" for label, text in b.rows))
        elif b.kind == "figure" and b.png:
            out.append(f"![{b.text}]({folder}/{b.name}.png)\n\n*{b.text}*")
        elif b.kind == "code":
            out.append(f"```\n{b.text}\n```")
        elif b.kind == "list":
            out.append("\n".join(f"- {_inline(i, md=True)}" for i in b.items))
    return "\n\n".join(out) + "\n"
