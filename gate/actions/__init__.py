"""Where a decision becomes an unlock: one path for every door command, signed for the door.

:mod:`.unlock` logs, sends and announces every unlock or lock (by face, by
hand, from Home Assistant); :mod:`.signing` keeps the doors' keys and signs the
commands; :mod:`.controller` is the door controller's side, which checks them.
"""
