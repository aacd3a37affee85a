"""The live MAHIA-X training dashboard (``streamlit run dashboard``).

Modules: ``streamlit_app`` (navigation and sidebar), ``views`` (one function per page),
``bug_lab`` (the Bug lab page), ``state`` (the session-state keys they share), ``data``
(store access and the live cache), ``processing`` (pure pandas/numpy), ``charts`` (pure
Plotly figure builders), ``runs`` (background training processes), ``verdict_jobs``
(catalog verdicts measured in processes of their own). The server only reads and draws.
"""
