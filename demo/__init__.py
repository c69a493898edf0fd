"""A runnable demo of understudy: an order saga over three participants with real ledgers.

``python -m demo`` places a few hundred orders (create the order, reserve stock, charge the card),
lets some fail for business reasons (declined cards, stock running out), SIGKILLs saga host
processes while sagas are in flight, and then checks, from the participants' own SQLite files
and the saga store, that every order ended completed or fully compensated and that no money or
stock was created or lost. It exists to show the guarantees, not to describe them.
"""
