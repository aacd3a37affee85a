"""The live MAHIA-X training dashboard (``streamlit run dashboard``).

Modules: ``streamlit_app`` (the sidebar; runs the page picked), ``navigation`` (the page
list and addresses), the run pages ``training_page``, ``expert_load_page``,
``memory_nodes_page``, ``loss_weights_page`` and ``memory_page``, which draw in ``frame``
(title, live fragment, status lines) with the helpers of ``page_charts`` and the shared
figures of ``figure_cache``, of the runs ``shown`` names; the other pages ``bug_lab``,
``my_attempts`` and ``class_page``; ``state`` (the session-state keys they share), ``data``
(store access and the live cache), ``processing`` (pure pandas/numpy), ``charts`` (pure
Plotly figure builders), ``runs`` (background training processes), ``verdict_jobs``
(catalog verdicts measured in processes of their own). The server only reads and draws.
"""
