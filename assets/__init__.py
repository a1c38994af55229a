"""The asset graph, one module per stage; metric SQL lives in assets/sql/."""
