"""Reports: the HTML/PNG report of a run and its figures."""
