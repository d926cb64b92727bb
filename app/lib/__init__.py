"""Helpers of the Streamlit workbench (app only; the library lives in ``calib/``).

Pages import these as ``from lib import ...`` after :func:`app_path` style bootstrapping::

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
"""
