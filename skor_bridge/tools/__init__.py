"""Tools built on the pipeline, apart from it: nothing in the pipeline imports them
(tests/test_imports.py checks it).

    bench     `skor-bridge bench`: the README's Performance figures
    demo      `skor-bridge demo`: the whole pipeline in one process
    receiver  the demo's webhook receiver (also the tests' real HTTP receiver)
"""
