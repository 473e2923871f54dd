"""Many cameras, many machines: a fleet of projects trained, scored and watched on Ray.

    manifest.py   the TOML file that lists the cameras: project, footage to train on and to score, live source
    engine.py     the Ray session (a local one by default, or a cluster) and the loop that feeds workers
    training.py   fleet train: each camera's model as one Ray task
    scoring.py    fleet score: clips on a pool of workers that keep a few cameras' models loaded; the events table
    watching.py   fleet watch: one long-running actor per camera, each owning a vidanom.watch.Watcher
    overview.py   fleet status and fleet report

Ray is imported only when a command runs on it (pip install 'vidanom[ray]').
"""
