"""Model cards shipped with ca2vdm (installed as the `ca2vdm_cli.bundled_weights` package).

`<preset>.json` is a downloadable preset (card.py format with a `sources` table); a sub-directory holding
`ca2vdm.json` is an embedded model directory (the default `sprites` model). Data only: nothing to import.
"""
