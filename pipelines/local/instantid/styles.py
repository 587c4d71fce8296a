"""The nine style templates of the InstantID demo (instantX-research/InstantID,
`gradio_demo/style_template.py`, Apache-2.0), under the names the Segmind InstantID node's `style`
input takes, so a workflow switches between the local and the cloud backend without touching it.

A template wraps the prompt (`{prompt}` is replaced by it) and puts its negative in front of the
user's, joined by one space — as the demo does. Prompt weights such as `(text:1.2)` are understood
by the prompt encoder (prompts.py)."""
from __future__ import annotations

# the negative that six of the templates share
SHARED_NEGATIVE = (
    '(lowres, low quality, worst quality:1.2), (text:1.2), watermark, (frame:1.2), deformed, '
    'ugly, deformed eyes, blur, out of focus, blurry, deformed cat, deformed, photo, '
    'anthropomorphic cat, monochrome, photo, pet collar, gun, weapon, blue, 3d, drones, drone, '
    'buildings in background, green'
)

STYLES: dict[str, tuple[str, str]] = {
    '(No style)': (
        '{prompt}',
        ""),
    'Watercolor': (
        'watercolor painting, {prompt}. vibrant, beautiful, painterly, detailed, textural, '
        'artistic',
        '(lowres, low quality, worst quality:1.2), (text:1.2), watermark, anime, photorealistic, '
        '35mm film, deformed, glitch, low contrast, noisy'),
    'Film Noir': (
        'film noir style, ink sketch|vector, {prompt} highly detailed, sharp focus, ultra '
        'sharpness, monochrome, high contrast, dramatic shadows, 1940s style, mysterious, '
        'cinematic',
        SHARED_NEGATIVE),
    'Neon': (
        'masterpiece painting, buildings in the backdrop, kaleidoscope, lilac orange blue cream '
        'fuchsia bright vivid gradient colors, the scene is cinematic, {prompt}, emotional '
        'realism, double exposure, watercolor ink pencil, graded wash, color layering, magic '
        'realism, figurative painting, intricate motifs, organic tracery, polished',
        SHARED_NEGATIVE),
    'Jungle': (
        'waist-up "{prompt} in a Jungle" by Syd Mead, tangerine cold color palette, muted colors,'
        ' detailed, 8k,photo r3al,dripping paint,3d toon style,3d style,Movie Still',
        SHARED_NEGATIVE),
    'Mars': (
        '{prompt}, Post-apocalyptic. Mars Colony, Scavengers roam the wastelands searching for '
        'valuable resources, rovers, bright morning sunlight shining, (detailed) (intricate) (8k)'
        ' (HDR) (cinematic lighting) (sharp focus)',
        SHARED_NEGATIVE),
    'Vibrant Color': (
        'vibrant colorful, ink sketch|vector|2d colors, at nightfall, sharp focus, {prompt}, '
        'highly detailed, sharp focus, the clouds,colorful,ultra sharpness',
        SHARED_NEGATIVE),
    'Snow': (
        'cinema 4d render, {prompt}, high contrast, vibrant and saturated, sico style, surrounded'
        ' by magical glow,floating ice shards, snow crystals, cold, windy background, frozen '
        'natural landscape in background  cinematic atmosphere,highly detailed, sharp focus, '
        'intricate design, 3d, unreal engine, octane render, CG best quality, highres, '
        'photorealistic, dramatic lighting, artstation, concept art, cinematic, epic Steven '
        'Spielberg movie still, sharp focus, smoke, sparks, art by pascal blanche and greg '
        'rutkowski and repin, trending on artstation, hyperrealism painting, matte painting, 4k '
        'resolution',
        SHARED_NEGATIVE),
    'Line art': (
        'line art drawing {prompt} . professional, sleek, modern, minimalist, graphic, line art, '
        'vector graphics',
        'anime, photorealistic, 35mm film, deformed, glitch, blurry, noisy, off-center, deformed,'
        ' cross-eyed, closed eyes, bad anatomy, ugly, disfigured, mutated, realism, realistic, '
        'impressionism, expressionism, oil, acrylic'),
}
NO_STYLE = "(No style)"


class UnknownStyleError(ValueError):
    pass


def apply_style(style: str, prompt: str, negative_prompt: str = "") -> tuple[str, str]:
    """(prompt, negative prompt) with the template applied."""
    if style not in STYLES:
        raise UnknownStyleError(f"style {style!r} is not one of the InstantID templates: {', '.join(STYLES)}")
    template, negative = STYLES[style]
    return template.replace("{prompt}", prompt), negative + " " + negative_prompt
