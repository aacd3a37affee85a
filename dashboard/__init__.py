"""The live MAHIA-X training dashboard (``streamlit run dashboard``).

Modules: ``streamlit_app`` (navigation and sidebar), ``views`` (one function per page),
``data`` (store access and the live cache), ``processing`` (pure pandas/numpy),
``charts`` (pure Plotly figure builders), ``runs`` (background training processes).
"""
